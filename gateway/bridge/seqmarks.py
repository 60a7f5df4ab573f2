"""Per-device event ``seq`` high-water marks that survive the loss of the event queue.

The queue (``spool.db``) holds each device's exact last ``seq``; this small JSON file beside
it holds, per device, a mark at or above every ``seq`` ever handed out, so that a ``seq``
never goes backwards when the queue file is lost, corrupt, replaced, or could not be written
(a full disk). Marks are reserved ``RESERVE`` ahead: the file is rewritten about once per
``RESERVE`` events of a device, never per event. When the queue is known to be exact (it
was written up to the stop), its seqs are used and nothing jumps; when it is not, a device's
next ``seq`` continues above its mark, a forward jump of at most ``RESERVE``.

The file is replaced atomically (a temporary file and a rename). On a full disk that needs
space the disk does not have, so the file is kept padded to whole 4 KiB blocks and then
rewritten in place, which needs none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

from gateway.logs import Recurring

log = logging.getLogger(__name__)

#: how far ahead of a device's latest seq its mark is kept
RESERVE = 1000
_BLOCK = 4096


class SeqMarks:
    """``marks.reserve(device, seq)`` before ``seq`` is handed out; ``exact`` says whether
    the queue's own seqs can be trusted at the next start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.marks: dict[str, int] = {}
        #: False while the queue may lag what was handed out (its writes failed)
        self.exact = True
        #: the file was there and readable (a gateway ran with this state directory before)
        self.found = False
        self._failures = Recurring(log, f"cannot write the seq marks {path}", level=logging.ERROR)
        self._size = 0
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot read the seq marks %s (%s): seqs continue from the event queue",
                      path, exc)
            return
        self._size = len(raw)
        try:
            data = json.loads(raw)
            self.marks = {str(device): int(seq) for device, seq in data["marks"].items()}
            self.exact = bool(data.get("exact", True))
            self.found = True
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            with contextlib.suppress(OSError):
                path.replace(aside)
                self._size = 0
            log.error("the seq marks %s are unreadable (%s); moved to %s: seqs continue from "
                      "the event queue", path, exc, aside)
            self.marks = {}

    def reserve(self, device_id: str, seq: int) -> None:
        """``seq`` is about to be handed out: keep the mark of ``device_id`` at or above it."""
        if seq > self.marks.get(device_id, 0):
            self.marks[device_id] = seq + RESERVE
            self.save()

    def raise_to(self, seqs: dict[str, int]) -> None:
        """Marks at or above ``seqs`` (with their reserve), saved once if any moved."""
        changed = False
        for device_id, seq in seqs.items():
            if seq > self.marks.get(device_id, 0):
                self.marks[device_id] = seq + RESERVE
                changed = True
        if changed:
            self.save()

    def set_exact(self, exact: bool) -> None:
        """The queue's seqs are (or stop being) a full record; saved when it changes."""
        if exact != self.exact:
            self.exact = exact
            self.save()

    def save(self) -> bool:
        """Write the file; False (logged, recurring) if the disk refused even in place."""
        body = json.dumps({"exact": self.exact, "marks": self.marks}, sort_keys=True).encode()
        padded = body + b" " * (-(len(body) + 1) % _BLOCK) + b"\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(padded)
            tmp.replace(self.path)
            self._size = len(padded)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not self._in_place(body, exc):
                return False
        self._failures.ended("written again")
        return True

    def _in_place(self, body: bytes, error: OSError) -> bool:
        # The old file's blocks are already allocated: overwriting them needs no free space.
        if len(body) + 1 > self._size:
            self._failures.occurred(f"{error}; the file has no room for {len(self.marks)} "
                                    "devices' marks in place")
            return False
        try:
            with self.path.open("r+b") as out:
                out.write(body + b" " * (self._size - len(body) - 1) + b"\n")
        except OSError as exc:
            self._failures.occurred(str(exc))
            return False
        return True

    def above(self, seqs: dict[str, int]) -> dict[str, int]:
        """``seqs`` raised to the marks: where each device continues when the queue's seqs
        cannot be trusted."""
        merged = dict(self.marks)
        for device_id, seq in seqs.items():
            merged[device_id] = max(seq, merged.get(device_id, 0))
        return merged
