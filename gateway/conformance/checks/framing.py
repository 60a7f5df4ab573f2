"""The framing checks (to be written)."""
