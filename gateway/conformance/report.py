"""A run's results as people and CI read them: a terminal table (coloured on a tty) with a
summary line, a JSON document, and JUnit XML. All three say the same verdicts."""

from __future__ import annotations

import json
import shutil
import textwrap
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway import __version__
from gateway.conformance.rules import SPEC
from gateway.conformance.runner import Options, Result, counts, summary

_COLOURS = {"pass": "\x1b[32m", "fail": "\x1b[1;31m", "skip": "\x1b[33m"}
_DIM, _RESET = "\x1b[2m", "\x1b[0m"


def table(results: list[Result], out: TextIO, *, colour: bool) -> None:
    """One row per rule (id, verdict, statement, what was found), failures followed by the
    spec section and the frames; then the summary line."""
    width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))
    statement_width = max(30, min(60, width - 40))

    def paint(text: str, verdict: str) -> str:
        return f"{_COLOURS[verdict]}{text}{_RESET}" if colour else text

    def dim(text: str) -> str:
        return f"{_DIM}{text}{_RESET}" if colour else text

    out.write(f"{'RULE':<6}  {'RESULT':<6}  {'RULE SAYS':<{statement_width}}  FOUND\n")
    for result in results:
        rule = result.rule
        lines = textwrap.wrap(rule.statement, statement_width) or [""]
        shown = result.verdict.upper() if result.verdict == "fail" else result.verdict
        verdict = paint(f"{shown:<6}", result.verdict)
        found = textwrap.wrap(result.why, max(20, width - statement_width - 18)) or [""]
        rows = max(len(lines), len(found))
        lines += [""] * (rows - len(lines))
        found += [""] * (rows - len(found))
        for i in range(rows):
            head = f"{rule.id:<6}  {verdict}" if i == 0 else f"{'':<6}  {'':<6}"
            out.write(f"{head}  {lines[i]:<{statement_width}}  {found[i]}".rstrip() + "\n")
        if result.verdict == "fail":
            out.write(dim(f"{'':<16}spec: {SPEC} section {rule.section}") + "\n")
            for record in result.evidence:
                out.write(dim(f"{'':<16}{record.line()}") + "\n")
    line = summary(results)
    failed = any(r.verdict == "fail" for r in results)
    out.write(paint(line, "fail" if failed else "pass") + "\n")
    out.flush()


def as_json(results: list[Result], options: Options, duration_s: float) -> dict[str, Any]:
    """The run as a JSON-ready dict."""
    count = counts(results)
    return {
        "tool": "mcp-gateway conformance",
        "version": __version__,
        "spec": SPEC,
        "port": options.url,
        "frames": options.frames,
        "profile": options.profile.name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 3),
        "summary": {"passed": count["pass"], "failed": count["fail"],
                    "skipped": count["skip"], "text": summary(results)},
        "results": [
            {"id": r.rule.id, "group": r.rule.group, "statement": r.rule.statement,
             "section": r.rule.section, "verdict": r.verdict, "why": r.why,
             "duration_s": round(r.duration_s, 3),
             "evidence": [record.to_json() for record in r.evidence]}
            for r in results
        ],
    }


def write_json(path: str, results: list[Result], options: Options, duration_s: float) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(as_json(results, options, duration_s), out, indent=2, ensure_ascii=False)
        out.write("\n")


def junit(results: list[Result], options: Options, duration_s: float) -> ET.ElementTree:
    """JUnit XML: one testsuite, one testcase per rule (classname ``conformance.GROUP``)."""
    count = counts(results)
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"mcp-conformance {options.profile.name} {options.frames}",
        "tests": str(len(results)), "failures": str(count["fail"]), "errors": "0",
        "skipped": str(count["skip"]), "time": f"{duration_s:.3f}"})
    props = ET.SubElement(suite, "properties")
    for name, value in (("port", options.url), ("frames", options.frames),
                        ("profile", options.profile.name), ("version", __version__)):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for r in results:
        case = ET.SubElement(suite, "testcase", {
            "classname": f"conformance.{r.rule.group}", "name": f"{r.rule.id} {r.rule.statement}",
            "time": f"{r.duration_s:.3f}"})
        if r.verdict == "fail":
            failure = ET.SubElement(case, "failure", {"message": r.why, "type": r.rule.id})
            failure.text = "\n".join([f"spec: {SPEC} section {r.rule.section}",
                                      *(record.line() for record in r.evidence)])
        elif r.verdict == "skip":
            ET.SubElement(case, "skipped", {"message": r.why})
        elif r.why:
            ET.SubElement(case, "system-out").text = r.why
    ET.indent(suites)
    return ET.ElementTree(suites)


def write_junit(path: str, results: list[Result], options: Options, duration_s: float) -> None:
    junit(results, options, duration_s).write(path, encoding="utf-8", xml_declaration=True)
