"""How the gateway logs: to stderr, journald-friendly text (no timestamps under systemd) or
JSON lines; and a condition that recurs is logged once, then counted, never a flood."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

# syslog priorities, as journald reads them from a "<N>" prefix
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    """``<6>gateway.session: sim-0: online (registered)``: journald adds the time and
    reads the priority from the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger once for the process (stderr only)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                      "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class Recurring:
    """A condition that can recur many times a second (a full queue, a device sending bad
    frames): logged once when it begins, then at most one summary with the count every
    ``summary_s``, then once (at INFO) when it ends. ``occurred`` and ``ended`` are cheap
    enough for a hot path: a counter and a clock read.

    ``ended`` is for conditions with a natural end (the queue has room again); one without
    (a device that sends a bad frame now and then) begins again when it recurs after a
    summary interval of quiet, with the count of the last episode in its line.
    """

    def __init__(self, logger: logging.Logger, what: str, *, level: int = logging.WARNING,
                 summary_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.what = what
        self._level = level
        self._summary_s = summary_s
        self._clock = clock
        #: the condition holds (since ``occurred`` first, until ``ended``)
        self.active = False
        #: occurrences in all, and since the last line logged
        self.total = 0
        self._unlogged = 0
        self._last_line = 0.0
        self._last_seen = 0.0
        self._began = 0.0

    def occurred(self, detail: str = "", count: int = 1) -> bool:
        """It happened (``count`` times): logged if it begins, summarised if it is time.
        True when this occurrence was logged on its own line (it began the condition), so a
        caller can keep its follow-up lines for the occurrences that were."""
        now = self._clock()
        self.total += count
        if not self.active or now - self._last_seen >= self._summary_s:
            if self.active and self._unlogged:
                self._summary(self._last_seen)  # the episode before the quiet
            self.active, self._began, self._unlogged = True, now, 0
            self._log.log(self._level, "%s%s", self.what, f": {detail}" if detail else "")
            self._last_line = self._last_seen = now
            return True
        self._last_seen = now
        self._unlogged += count
        if now - self._last_line >= self._summary_s:
            self._summary(now, detail)
        return False

    def _summary(self, now: float, detail: str = "") -> None:
        self._log.log(self._level, "%s: %d more times in %.0f s%s", self.what,
                      self._unlogged, now - self._last_line,
                      f" (latest: {detail})" if detail else "")
        self._unlogged, self._last_line = 0, now

    def ended(self, detail: str = "") -> None:
        """It no longer holds: one INFO line with how long and how often (if it held)."""
        if not self.active:
            return
        now = self._clock()
        more = f", {self._unlogged} times since the last line" if self._unlogged else ""
        self._log.info("%s: over after %.0f s%s%s", self.what, now - self._began, more,
                       f" ({detail})" if detail else "")
        self.active, self._unlogged = False, 0
