"""The kit's probe on a real pty, written to by hand: what it makes of bytes a device gets
wrong, before any check judges them."""

from __future__ import annotations

from gateway.conformance.probe import Probe
from gateway.frames import Command, encode_frame
from tests.raw_port import RawPort


async def test_a_frame_cut_short_is_dropped_at_the_timeout_and_the_next_frame_arrives():
    """A device frame that stops short (or whose length is wrong) must not hold up the
    frames behind it until enough bytes come to fill it: the probe drops it after the
    inter-frame timeout, as the gateway's driver does, and quotes the bytes it dropped.
    (On ms720 the next sync word ends a frame cut short at once.)"""
    cut = encode_frame(Command.STATUS, bytes(10))[:6]  # declares 10 bytes, 2 come
    with RawPort() as port:
        async with Probe(port.path, frames="mcp", profile=None) as probe:
            probe.answer_pings = False
            await port.write(cut + encode_frame(Command.PING))
            ping = await probe.wait_for(lambda r: r.cmd_id == Command.PING, within=2.0,
                                        after=0)
            assert ping is not None, [r.line() for r in probe.records]
            dropped = [r for r in probe.received if r.link == "raw"]
            assert len(dropped) == 1, [r.line() for r in probe.records]
            assert dropped[0].text == ("6 of these 11 bytes are no valid frame (discarded, a "
                                       "partial frame dropped after the inter-frame timeout)")
            assert dropped[0].wire.startswith(cut)
            assert probe.received.index(dropped[0]) < probe.received.index(ping)


async def test_a_transcript_line_is_one_line_and_shows_only_what_was_sent():
    with RawPort() as port:
        async with Probe(port.path, frames="mcp", profile=None) as probe:
            probe.answer_pings = False
            sent = probe.send(Command.PING)
            await port.write(encode_frame(Command.PONG, bytes(4)))  # a PONG is empty
            pong = await probe.wait_for(lambda r: r.cmd_id == Command.PONG, within=2.0,
                                        after=0)
    assert sent.line().endswith("kit->dev  5a 02 00 00 02  PING")
    assert pong is not None
    assert "\n" not in pong.line()
    assert "PONG payload=00000000 [does not decode: PONG: bad payload" in pong.line()
