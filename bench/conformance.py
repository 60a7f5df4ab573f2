"""How long a conformance run takes: the whole kit against a conformant simulated
env-sensor (``mcp-sim`` in a child process, on a pty), on each frame profile.

It prints, per frame profile, the run's wall time, each group's time (the sum of its
rules' durations) and the verdict counts, as JSON lines and a table. The issue's goal: a
default run under 30 s. ``--smoke`` runs only the framing group (so CI sees it still
works).

    .venv/bin/python bench/conformance.py [--frames mcp ms720] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.conformance.rules import GROUPS
from gateway.conformance.runner import Options, counts, run
from gateway.frames import ProfileRegistry

BIN = Path(sys.executable).parent


async def measure(frames: str, only: tuple[str, ...] | None) -> dict:
    sim = await asyncio.create_subprocess_exec(
        str(BIN / "mcp-sim"), "--pty", "--count", "1", "--frames", frames,
        stdout=asyncio.subprocess.PIPE)
    try:
        assert sim.stdout is not None
        line = await asyncio.wait_for(sim.stdout.readline(), 15)
        path = line.decode().split()[1]
        options = Options(url=path, profile=ProfileRegistry().get("env-sensor"),
                          frames=frames, only=only)
        started = time.monotonic()
        results = await run(options)
        wall = time.monotonic() - started
    finally:
        sim.terminate()
        await sim.wait()
    groups = {g: round(sum(r.duration_s for r in results if r.rule.group == g), 2)
              for g in GROUPS if any(r.rule.group == g for r in results)}
    slowest = max(results, key=lambda r: r.duration_s)
    return {"frames": frames, "wall_s": round(wall, 2), "groups_s": groups,
            "verdicts": counts(results), "rules": len(results),
            "slowest": f"{slowest.rule.id} {slowest.duration_s:.2f} s",
            "failed": [r.rule.id for r in results if r.verdict == "fail"]}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", nargs="+", default=["mcp", "ms720"])
    parser.add_argument("--smoke", action="store_true", help="only the framing group")
    args = parser.parse_args()
    only = ("framing",) if args.smoke else None
    rows = [await measure(frames, only) for frames in args.frames]
    for row in rows:
        print(json.dumps(row))
    print(f"{'frames':<7} {'rules':>5} {'wall s':>7}  {'pass/fail/skip':<14}  groups (s)")
    for row in rows:
        v = row["verdicts"]
        groups = ", ".join(f"{g} {s}" for g, s in row["groups_s"].items())
        print(f"{row['frames']:<7} {row['rules']:>5} {row['wall_s']:>7}  "
              f"{v['pass']}/{v['fail']}/{v['skip']:<10}  {groups}  (slowest {row['slowest']})")
    return 1 if any(row["failed"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
