"""Files under ``state_dir``: where one that cannot be read is moved aside, never overwritten."""

from __future__ import annotations

import itertools
import os
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


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash or a power cut leaves the old file or
    the new one, never a mix: a temporary file beside it, fsync, rename, fsync of the
    directory (the rename itself survives). ``OSError`` if the disk refuses (the temporary
    file is removed; the old file stays)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
