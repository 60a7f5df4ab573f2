"""Hypothesis strategies shared by the codec tests."""

from __future__ import annotations

from hypothesis import strategies as st

from gateway.frames import Frame

payloads = st.one_of(
    st.binary(max_size=24),
    st.binary(min_size=200, max_size=256),
    st.binary(max_size=256),
)
frames = st.builds(Frame, st.integers(0, 255), payloads, st.none())
frame_lists = st.lists(frames, min_size=1, max_size=12)
garbage_without_header = st.binary(max_size=40).map(lambda b: b.replace(b"\x5a", b"\x00"))
