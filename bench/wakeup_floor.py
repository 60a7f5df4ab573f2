"""What one wake-up costs on this machine, before the gateway does anything (issue 19).

A process that sleeps in ``epoll_wait`` and is woken N times a second pays for each return:
the kernel's switch back, and cache and TLB misses on whatever it touches next. This bench
measures the CPU (user + system, ``CLOCK_PROCESS_CPUTIME_ID``) per wake-up of three sleepers
that do nothing else, at 100 and 1,000 wake-ups per second:

- C: ``epoll_wait`` with a timeout, on an empty epoll set (compiled here with gcc);
- Python: ``select.epoll().poll(timeout)`` in a loop;
- asyncio: ``await asyncio.sleep(1 / rate)`` (a loop turn: its timer heap, handles, epoll).

The gateway's CPU per event at low rates cannot go below (wake-ups per event) x the asyncio
figure; this is the floor ``linger_ms`` and the batched PUBACK reads cut into.

    .venv/bin/python bench/wakeup_floor.py [--seconds 3] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>
int main(int argc, char **argv) {
    int rate = atoi(argv[1]), n = atoi(argv[2]);
    int ep = epoll_create1(0);
    struct epoll_event ev;
    struct timespec a, b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    for (int i = 0; i < n; i++) epoll_wait(ep, &ev, 1, 1000 / rate);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n / 1e3);
    return 0;
}
"""


def _c_us(binary: Path, rate: int, n: int) -> float:
    out = subprocess.run([str(binary), str(rate), str(n)], capture_output=True, text=True,
                         check=True)
    return float(out.stdout)


def _python_us(rate: int, n: int) -> float:
    poller = select.epoll()
    t0 = time.process_time()
    for _ in range(n):
        poller.poll(1 / rate)
    poller.close()
    return (time.process_time() - t0) / n * 1e6


async def _asyncio_turns(rate: int, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        await asyncio.sleep(1 / rate)
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per sleeper and rate")
    parser.add_argument("--smoke", action="store_true", help="a short run; numbers mean little")
    args = parser.parse_args()
    seconds = 0.2 if args.smoke else args.seconds
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "wake"
        gcc = shutil.which("gcc")
        if gcc is not None:
            source = Path(tmp) / "wake.c"
            source.write_text(_C)
            subprocess.run([gcc, "-O2", "-o", str(binary), str(source)], check=True)
        for rate in (100, 1000):
            n = max(10, int(rate * seconds))
            row = {"wakeups_per_s": rate,
                   "c_us": round(_c_us(binary, rate, n), 1) if gcc else None,
                   "python_epoll_us": round(_python_us(rate, n), 1),
                   "asyncio_us": round(asyncio.run(_asyncio_turns(rate, n)), 1)}
            rows.append(row)
            print(json.dumps(row))
    print(f"{'wake-ups/s':>10} {'C epoll':>9} {'Python epoll':>13} {'asyncio turn':>13}  "
          "(CPU us per wake-up)")
    for row in rows:
        print(f"{row['wakeups_per_s']:>10,} {row['c_us'] or '-':>9} {row['python_epoll_us']:>13} "
              f"{row['asyncio_us']:>13}")


if __name__ == "__main__":
    main()
