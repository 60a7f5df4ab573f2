"""The deframer: a fixed matrix of golden streams, timeouts, and properties against Construct."""

from __future__ import annotations

import itertools
import random

import pytest
from construct import CheckError, ChecksumError, StreamError
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.frames import MAX_FRAME, MCP_FRAME, Deframer, Frame
from gateway.frames.deframer import _window_xor
from tests.strategies import frame_lists, frames, garbage_without_header


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


GOLDEN = [
    Frame(0x02, b""),
    Frame(0x10, b"\x01\x00"),
    Frame(0x20, bytes.fromhex("66 08 94 11 e4 0c 10 0e 00 00")),
    Frame(0x21, b"\x02boot ok"),
    Frame(0x90, bytes.fromhex("01 00 d2 04 00 00")),
    Frame(0x30, bytes(range(256))),  # the longest payload
    Frame(0x20, b"\x5a\x5a\x5a"),  # header bytes inside a payload
]
GOLDEN_BYTES = b"".join(f.encode() for f in GOLDEN)


def feed_in(chunks, deframer=None):
    # Splitting, not timing, is under test: a slow run must not expire a partial frame.
    deframer = deframer or Deframer(timeout=1e9)
    out = []
    for chunk in chunks:
        out += deframer.feed(chunk)
    return out, deframer


def split_whole(data):
    return [data]


def split_halves(data):
    return [data[: len(data) // 2], data[len(data) // 2 :]]


def split_bytes(data):
    return [data[i : i + 1] for i in range(len(data))]


SPLITS = [split_whole, split_halves, split_bytes]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("frame", GOLDEN, ids=[repr(f)[:40] for f in GOLDEN])
def test_each_golden_frame_whole_halves_and_byte_by_byte(frame, split):
    out, deframer = feed_in(split(frame.encode()))
    assert out == [frame]
    assert deframer.stats.discarded_bytes == 0
    assert deframer.buffered == 0


GARBAGE = b"\x00\xff\x13\x37"
HEADERY_GARBAGE = b"\x5a\x01\x00"  # a 0x5A with a length that reaches into the next frame


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize(
    ("name", "stream", "discarded"),
    [
        ("garbage before", GARBAGE + GOLDEN_BYTES, 4),
        ("garbage after", GOLDEN_BYTES + GARBAGE, 4),
        ("garbage between", GARBAGE.join(f.encode() for f in GOLDEN), 4 * 6),
        ("0x5A garbage before", HEADERY_GARBAGE + GOLDEN_BYTES, 3),
        ("0x5A garbage between", HEADERY_GARBAGE.join(f.encode() for f in GOLDEN), 3 * 6),
    ],
)
def test_garbage_before_between_and_after_loses_nothing(name, stream, discarded, split):
    out, deframer = feed_in(split(stream))
    assert out == GOLDEN
    assert deframer.stats.discarded_bytes + deframer.buffered == discarded


@pytest.mark.parametrize("split", SPLITS)
def test_a_bad_frame_followed_by_a_good_one(split):
    bad = bytearray(GOLDEN[2].encode())
    bad[-1] ^= 0xFF
    out, deframer = feed_in(split(bytes(bad) + GOLDEN[1].encode()))
    assert out == [GOLDEN[1]]
    assert deframer.stats.checksum_errors >= 1
    assert deframer.stats.discarded_bytes == len(bad)


@pytest.mark.parametrize("split", SPLITS)
def test_an_oversize_length_drops_one_byte_and_resyncs(split):
    stream = bytes.fromhex("5a 20 01 01") + GOLDEN[0].encode()  # length 257
    out, deframer = feed_in(split(stream))
    assert out == [GOLDEN[0]]
    assert deframer.stats.oversize_lengths == 1
    assert deframer.stats.discarded_bytes == 4


def test_a_real_frame_inside_a_rejected_candidate_is_found():
    # The false 0x5A claims 8 payload bytes, which swallow the whole real frame behind it.
    real = GOLDEN[1].encode()
    stream = b"\x5a\x20\x08\x00" + real + b"\x00\x00"
    out, deframer = feed_in([stream])
    assert out == [GOLDEN[1]]
    assert deframer.stats.checksum_errors == 1


def test_counters_account_for_every_byte():
    stream = GARBAGE + GOLDEN_BYTES + b"\x5a\x10"
    out, deframer = feed_in([stream])
    s = deframer.stats
    assert s.frames == len(GOLDEN) == len(out)
    assert s.bytes_in == len(stream)
    assert s.bytes_in == s.framed_bytes + s.discarded_bytes + deframer.buffered
    assert deframer.buffered == 2


def test_incomplete_frame_is_kept_across_reads_until_the_timeout():
    clock = FakeClock()
    deframer = Deframer(timeout=0.1, clock=clock)
    wire = GOLDEN[2].encode()
    assert deframer.feed(wire[:5]) == []
    clock.now = 0.09
    assert deframer.expire() == []
    assert deframer.deadline == pytest.approx(0.1)
    assert deframer.feed(wire[5:]) == [GOLDEN[2]]
    assert deframer.stats.stale_frames == 0


def test_stale_incomplete_frame_is_dropped_and_frames_behind_it_recovered():
    clock = FakeClock()
    deframer = Deframer(timeout=0.1, clock=clock)
    # A truncated frame (its tail was lost on the line), then a complete one.
    truncated = GOLDEN[5].encode()[:40]
    assert deframer.feed(truncated + GOLDEN[1].encode()) == []  # waits for 261 bytes
    clock.now = 0.1
    assert deframer.expire() == [GOLDEN[1]]
    assert deframer.stats.stale_frames == 1
    assert deframer.buffered == 0
    assert deframer.stats.discarded_bytes == 40


def test_stale_partial_is_dropped_on_the_next_feed_too():
    clock = FakeClock()
    deframer = Deframer(timeout=0.1, clock=clock)
    deframer.feed(GOLDEN[2].encode()[:6])
    clock.now = 1.0
    # Without the timeout these bytes would complete the old candidate as a corrupt frame.
    assert deframer.feed(GOLDEN[3].encode()) == [GOLDEN[3]]
    assert deframer.stats.stale_frames == 1
    assert deframer.stats.discarded_bytes == 6


def test_a_fresh_candidate_inside_a_stale_buffer_is_not_dropped_early():
    clock = FakeClock()
    deframer = Deframer(timeout=0.1, clock=clock)
    wire = GOLDEN[3].encode()
    deframer.feed(b"\x5a\x20\x40\x00")  # a false candidate at t=0 asking for 64 bytes
    clock.now = 0.08
    deframer.feed(wire[:5])  # a real frame starts at t=0.08
    clock.now = 0.1
    assert deframer.expire() == []  # the false one goes, the real one is younger than 0.1 s
    assert deframer.stats.stale_frames == 1
    clock.now = 0.15
    assert deframer.feed(wire[5:]) == [GOLDEN[3]]


def test_buffer_is_bounded_by_one_frame():
    deframer = Deframer()
    rng = random.Random(7)
    for _ in range(2000):
        deframer.feed(rng.randbytes(rng.randint(1, 700)))
        assert deframer.buffered < MAX_FRAME


def test_invalid_timeout_is_rejected():
    with pytest.raises(ValueError, match="must be positive"):
        Deframer(timeout=0)


# ---------------------------------------------------------------- properties


def reference_deframe(stream: bytes, *, flush: bool = False):
    """The spec's resync rules, step by step, with the Construct declaration as the parser.

    Returns the frames, their (start, end) spans in ``stream``, and the counters. With
    ``flush`` an incomplete frame at the end is dropped one byte at a time (the line went
    quiet past the inter-frame timeout).
    """
    out: list[Frame] = []
    spans: list[tuple[int, int]] = []
    counts = {"discarded_bytes": 0, "checksum_errors": 0, "oversize_lengths": 0}
    pos = 0
    while pos < len(stream):
        if stream[pos] != 0x5A:
            counts["discarded_bytes"] += 1
            pos += 1
            continue
        try:
            parsed = MCP_FRAME.parse(stream[pos : pos + MAX_FRAME])
        except CheckError:
            counts["oversize_lengths"] += 1
        except ChecksumError:
            counts["checksum_errors"] += 1
        except StreamError:
            if not flush:
                break  # incomplete: wait for more
        else:
            body = parsed.body.value
            out.append(Frame(body.cmd_id, body.payload))
            spans.append((pos, pos + 5 + body.payload_len))
            pos += 5 + body.payload_len
            continue
        counts["discarded_bytes"] += 1
        pos += 1
    return out, spans, counts


def chunks_of(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    edges = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


@given(frame_lists, st.lists(st.integers(0, 10_000), max_size=20))
def test_any_split_yields_the_same_frames(frame_list, cuts):
    stream = b"".join(f.encode() for f in frame_list)
    out, deframer = feed_in(chunks_of(stream, cuts))
    assert out == frame_list
    assert deframer.buffered == 0


@given(
    st.lists(st.tuples(garbage_without_header, frames), min_size=1, max_size=10),
    garbage_without_header,
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_garbage_without_header_never_loses_a_frame(pairs, tail, cuts):
    stream = b"".join(g + f.encode() for g, f in pairs) + tail
    out, deframer = feed_in(chunks_of(stream, cuts))
    assert out == [f for _, f in pairs]
    assert deframer.stats.discarded_bytes == sum(len(g) for g, _ in pairs) + len(tail)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.binary(max_size=30), frames), min_size=1, max_size=10),
    st.binary(max_size=30),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_arbitrary_garbage_loses_frames_only_to_false_accepts(pairs, tail, cuts):
    stream, sent_spans, offset = b"", [], 0
    for garbage, frame in pairs:
        stream += garbage + frame.encode()
        offset += len(garbage)
        sent_spans.append((offset, offset + len(frame.encode())))
        offset = sent_spans[-1][1]
    stream += tail
    clock = FakeClock()
    deframer = Deframer(clock=clock)
    out, _ = feed_in(chunks_of(stream, cuts), deframer)
    clock.now = 10.0  # the line goes quiet: whatever is held goes stale
    out += deframer.expire()

    expected, spans, _ = reference_deframe(stream, flush=True)
    assert out == expected  # so the reference's spans are the deframer's
    false_spans = [span for span in spans if span not in sent_spans]
    for start, end in sent_spans:
        if (start, end) not in spans:  # lost: a false accept must overlap it
            assert any(a < end and start < b for a, b in false_spans), (start, end, spans)


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(st.one_of(frames.map(Frame.encode), st.binary(max_size=12)), max_size=12).map(
            b"".join
        ),
    ),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_deframer_equals_the_construct_reference_on_any_stream(stream, cuts):
    expected, _, counts = reference_deframe(stream)
    out, deframer = feed_in(chunks_of(stream, cuts))
    assert out == expected
    stats = deframer.stats
    assert stats.checksum_errors == counts["checksum_errors"]
    assert stats.oversize_lengths == counts["oversize_lengths"]
    assert stats.discarded_bytes == counts["discarded_bytes"]
    assert stats.bytes_in == stats.framed_bytes + stats.discarded_bytes + deframer.buffered


same_size_runs = st.integers(0, 60).flatmap(
    lambda n: st.lists(
        st.builds(Frame, st.integers(0, 255), st.binary(min_size=n, max_size=n), st.none()),
        min_size=8,
        max_size=60,
    )
)


@settings(max_examples=300)
@given(
    same_size_runs,
    st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)), max_size=4),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_runs_of_same_size_frames_with_corruption_equal_the_reference(run, edits, cuts):
    # Long runs take the deframer's batch path; corrupted bytes must make it fall back exactly.
    stream = bytearray(b"".join(f.encode() for f in run))
    for at, value in edits:
        stream[at % len(stream)] = value
    stream = bytes(stream)
    expected, _, counts = reference_deframe(stream)
    out, deframer = feed_in(chunks_of(stream, cuts))
    assert out == expected
    if not edits:
        assert out == run
    assert deframer.stats.checksum_errors == counts["checksum_errors"]
    assert deframer.stats.discarded_bytes == counts["discarded_bytes"]


def test_window_xor_matches_a_plain_loop():
    rng = random.Random(3)
    data = rng.randbytes(300)
    value = int.from_bytes(data, "little")
    for width in (1, 2, 3, 7, 20, 53):
        got = _window_xor(value, width).to_bytes(300, "little")
        for i in range(300 - width):
            expected = 0
            for b in data[i : i + width]:
                expected ^= b
            assert got[i] == expected, (width, i)


def test_without_expiry_on_feed_a_late_feed_completes_the_frame():
    clock = [0.0]
    frame = Frame(0x20, bytes(range(10))).encode()
    for expire_on_feed, expected in ((True, []), (False, [Frame(0x20, bytes(range(10)))])):
        deframer = Deframer(timeout=0.1, clock=lambda: clock[0], expire_on_feed=expire_on_feed)
        assert deframer.feed(frame[:6]) == []
        clock[0] += 1.0  # the feed comes long after: a busy reader, or a silent line
        assert deframer.feed(frame[6:]) == expected
        clock[0] += 1.0
    # expire() still drops a partial that nothing completes.
    deframer = Deframer(timeout=0.1, clock=lambda: clock[0], expire_on_feed=False)
    deframer.feed(frame[:6])
    clock[0] += 1.0
    deframer.expire()
    assert deframer.buffered == 0
    assert deframer.stats.stale_frames == 1
