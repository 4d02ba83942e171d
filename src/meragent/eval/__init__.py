"""eval subpackage (see DESIGN.md)."""
