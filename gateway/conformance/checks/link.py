"""The link checks (to be written)."""
