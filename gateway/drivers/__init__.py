"""Async drivers: bytes between ports (serial, ``socket://``, in-memory) and the frame codecs."""
