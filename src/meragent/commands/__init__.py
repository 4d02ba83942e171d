"""Typer sub-apps, one module per command group; each command parses, builds a config, calls one
library function. Modules here import only light things at import time (heavy work is deferred)."""
