"""The checks: one async function per rule of ``gateway.conformance.rules``.

A check is declared with ``@check("REG-1", budget_s=...)``. It gets the run's ``Context``
and returns a short note on success (what it measured), or raises ``Failed`` (why, and the
frames that show it) or ``Skipped`` (why it could not run). A check either talks to the
device (active: run in the catalogue's order) or only reads the transcript when everything
else has run (``passive=True``). Its ``budget_s`` bounds it; every wait inside is bounded
well within it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.conformance.probe import Record
    from gateway.conformance.runner import Context


class Failed(Exception):
    """The device broke the rule: ``why`` in one sentence, ``evidence`` the frames."""

    def __init__(self, why: str, evidence: Iterable[Record] = ()) -> None:
        super().__init__(why)
        self.why = why
        self.evidence = list(evidence)


class Skipped(Exception):
    """The rule could not be checked (``why``: what is missing)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


CheckFn = Callable[["Context"], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Check:
    rule_id: str
    fn: CheckFn
    budget_s: float
    passive: bool


#: every check, by rule id (filled by the modules below as they are imported)
CHECKS: dict[str, Check] = {}


def check(rule_id: str, *, budget_s: float, passive: bool = False) -> Callable[[CheckFn], CheckFn]:
    """Declare ``fn`` as the check of ``rule_id``."""
    def register(fn: CheckFn) -> CheckFn:
        if rule_id in CHECKS:
            raise RuntimeError(f"two checks for {rule_id}")
        CHECKS[rule_id] = Check(rule_id, fn, budget_s, passive)
        return fn
    return register


def load() -> dict[str, Check]:
    """All checks (importing the group modules registers them)."""
    from gateway.conformance.checks import (  # noqa: F401, PLC0415 - they import this module
        framing,
        link,
        liveness,
        registration,
        requests,
        telemetry,
    )
    return CHECKS
