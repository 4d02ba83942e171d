"""graphs subpackage (see DESIGN.md)."""
