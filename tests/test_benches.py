"""Benches must not rot: each runs to the end in its smoke mode and prints its table.

Nothing is asserted about the numbers (they are measured by running the benches for real,
bench/README.md); only that every bench still works against today's code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
@pytest.mark.parametrize("bench", sorted(p.name for p in BENCH.glob("*.py")))
def test_the_bench_runs_in_smoke_mode(bench):
    result = subprocess.run([sys.executable, str(BENCH / bench), "--smoke"], capture_output=True,
                            text=True, timeout=110, check=False, cwd=BENCH.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # Every bench prints its figures as JSON (the table's data) and a table or summary line.
    assert any(line.startswith(("{", "[")) and json.loads(line) for line in lines), result.stdout
    assert any(line and not line.startswith(("{", "[")) for line in lines), result.stdout
