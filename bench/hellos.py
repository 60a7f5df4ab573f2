"""HELLO floods: what a port sending HELLOs with ever-new uids costs the gateway.

A raw pty peer in a child process (the other core) sends ``--hellos`` HELLOs, each with a
new uid, spread over ``--seconds``, with a STATUS frame in the same write as every tenth
HELLO; the gateway runs in this process. It prints the gateway's CPU % over the flood,
how many uids got a node id, how many times ``node_ids.json`` was rewritten, and STATUS
frames sent against STATUS events delivered. ``--full`` starts from a table holding all
65,535 node ids (issue 13, item 3).

    .venv/bin/python bench/hellos.py [--hellos 5000] [--seconds 15] [--full]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import tty
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.frames import Command, encode_frame, encode_payload
from gateway.session import TelemetryEvent

STATUS = encode_frame(Command.STATUS, bytes(10))


def hello(n: int) -> bytes:
    """A HELLO frame with uid ``n``."""
    return encode_frame(Command.HELLO, encode_payload(Command.HELLO, {
        "proto": 1, "uid": f"{n:016x}", "fw": "1.0.0", "model": "flood", "caps": []}))


def _peer(master: int, hellos: int, seconds: float, conn) -> None:
    """Child: send the HELLOs evenly over ``seconds``, reading whatever comes back."""
    os.set_blocking(master, False)
    assert conn.recv() == "go"
    start = time.monotonic()
    statuses = 0
    for n in range(hellos):
        data = hello(0x1000_0000 + n)
        if n % 10 == 0:
            data = STATUS + data + STATUS
            statuses += 2
        while True:
            try:
                os.write(master, data)
                break
            except BlockingIOError:
                time.sleep(0.001)
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(master, 1 << 16):
                pass
        due = start + seconds * (n + 1) / hellos
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
    conn.send(statuses)
    # Keep the pty open until the parent has counted.
    conn.recv()


def _write_full_table(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({f"{0xF000_0000 + n:016x}": n for n in range(1, 0x10000)}))


async def run(hellos: int, seconds: float, full: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        if full:
            _write_full_table(state / "node_ids.json")
        master, slave = os.openpty()
        tty.setraw(slave)
        config = parse_config({"gateway_id": "bench", "state_dir": str(state),
                               "ports": [{"name": "flood", "path": os.ttyname(slave)}]})
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        peer = ctx.Process(target=_peer, args=(master, hellos, seconds, child), daemon=True)
        peer.start()
        gateway = Gateway(config)
        subscription = gateway.subscribe()
        events = 0
        writes = 0
        loop = asyncio.get_running_loop()
        async with gateway:
            await asyncio.sleep(0.5)  # the port is open
            before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.monotonic()
            parent.send("go")
            sent = loop.run_in_executor(None, parent.recv)
            mtime = 0.0
            node_ids = state / "node_ids.json"
            while not sent.done():
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        events += isinstance(subscription.get_nowait(), TelemetryEvent)
                with contextlib.suppress(FileNotFoundError):
                    if (now := node_ids.stat().st_mtime) != mtime:
                        mtime, writes = now, writes + 1
                await asyncio.sleep(0.01)
            statuses = await sent
            await asyncio.sleep(0.5)  # the last frames arrive
            elapsed = time.monotonic() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    events += isinstance(subscription.get_nowait(), TelemetryEvent)
            store = gateway.node_ids
            known = len(store) if store is not None else 0
        parent.send("exit")
        peer.join(5)
        os.close(slave)
        os.close(master)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"hellos": hellos, "seconds": seconds, "full": full,
            "cpu_pct": round(100 * cpu / elapsed, 1), "uids_known": known,
            "file_rewrites_seen": writes, "status_sent": statuses, "status_events": events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hellos", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--full", action="store_true", help="start from a full node id table")
    parser.add_argument("--smoke", action="store_true", help="a short run (the tests)")
    args = parser.parse_args()
    if args.smoke:
        args.hellos, args.seconds = 200, 1.0
    result = asyncio.run(run(args.hellos, args.seconds, args.full))
    print(json.dumps(result))
    print(f"{result['hellos']} HELLOs with new uids in {result['seconds']:.0f} s"
          f"{' (full table)' if args.full else ''}: gateway CPU {result['cpu_pct']}%, "
          f"{result['uids_known']} uids known, node_ids.json rewritten "
          f"{result['file_rewrites_seen']}+ times, STATUS {result['status_events']}"
          f"/{result['status_sent']} delivered")


if __name__ == "__main__":
    main()
