"""Files under ``state_dir``: where one that cannot be read is moved aside, never overwritten."""

from __future__ import annotations

import itertools
import time
from pathlib import Path


def aside_path(path: Path) -> Path:
    """``NAME.corrupt-<time>`` beside ``path`` (``-2``, ``-3``… if taken): every damaged file
    is kept for inspection, an earlier one is never replaced."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for n in itertools.count(2):
        if not aside.exists():
            return aside
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    raise AssertionError("unreachable")
