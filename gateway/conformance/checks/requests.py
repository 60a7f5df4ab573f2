"""The requests checks (to be written)."""
