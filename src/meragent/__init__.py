"""meragent: multimodal emotion recognition agent for the MER challenges."""

__version__ = "0.1.0"
