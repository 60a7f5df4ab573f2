"""The registration checks (to be written)."""
