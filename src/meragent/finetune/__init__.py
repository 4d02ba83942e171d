"""finetune subpackage (see DESIGN.md)."""
