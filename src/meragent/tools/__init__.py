"""tools subpackage (see DESIGN.md)."""
