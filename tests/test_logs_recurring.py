"""Repeated conditions log once on entry, then a summary with counts at most every few
seconds, then once on exit: never a line per occurrence (issue 13, log floods)."""

from __future__ import annotations

import logging

from gateway.logs import Recurring


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "test.recurring"]


def test_a_flood_is_one_line_then_summaries_then_one_line_at_the_end(caplog):
    caplog.set_level(logging.INFO, "test.recurring")
    clock = Clock()
    queue_full = Recurring(logging.getLogger("test.recurring"), "event queue full",
                           summary_s=5.0, clock=clock)
    for i in range(1000):  # 143 a second for 7 s, as the issue measured
        queue_full.occurred(f"dropped the 2 oldest events ({i})", count=2)
        clock.now += 0.007
    queue_full.ended("room again")
    lines = _lines(caplog)
    assert lines[0] == ("WARNING", "event queue full: dropped the 2 oldest events (0)")
    assert len(lines) == 3, lines
    assert lines[1][1].startswith("event queue full: ")
    assert "more times in 5 s" in lines[1][1]
    assert lines[2][0] == "INFO"
    assert lines[2][1].startswith("event queue full: over after 7 s")
    assert queue_full.total == 2000
    assert not queue_full.active


def test_every_occurrence_is_counted_in_some_line(caplog):
    caplog.set_level(logging.INFO, "test.recurring")
    clock = Clock()
    bad = Recurring(logging.getLogger("test.recurring"), "bad HELLO", summary_s=2.0, clock=clock)
    for _ in range(50):
        bad.occurred()
        clock.now += 0.1
    bad.ended()
    counted = 1  # the first line
    for _, text in _lines(caplog)[1:]:
        if "more times" in text:
            counted += int(text.split(": ")[1].split()[0])
        elif "since the last line" in text:
            counted += int(text.split(", ")[1].split()[0])
    assert counted == 50


def test_a_condition_that_comes_back_after_quiet_begins_again(caplog):
    caplog.set_level(logging.INFO, "test.recurring")
    clock = Clock()
    bad = Recurring(logging.getLogger("test.recurring"), "bad HELLO", summary_s=2.0, clock=clock)
    bad.occurred("one")
    bad.occurred("two")
    clock.now += 60
    bad.occurred("three")
    texts = [t for _, t in _lines(caplog)]
    assert texts == ["bad HELLO: one", "bad HELLO: 1 more times in 0 s",
                     "bad HELLO: three"]


def test_ended_without_a_beginning_says_nothing(caplog):
    caplog.set_level(logging.INFO, "test.recurring")
    Recurring(logging.getLogger("test.recurring"), "x").ended()
    assert _lines(caplog) == []
