"""The telemetry checks (to be written)."""
