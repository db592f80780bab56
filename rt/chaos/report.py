"""The race lab's report: report.json, report.md and the terminal verdict table.

`check_dir(path)` is the offline re-check behind `rt chaos check DIR`: it
loads the records, checks them, rewrites report.json, report.md and
timeline.png in the directory, prints the verdict table and returns the exit
status of LAB.md section 1: 0 every invariant held, 1 one was violated, 2
the directory is not a run (the one-line reason goes to stderr).

report.json::

    {"ok": bool, "exit": 0 | 1, "seed": ..., "command": "...", "args": {...},
     "run": {"directory", "started", "faults_stopped", "stopped", "ended", "duration",
             "catch_up_limit", "flows", "clients", "history_events", "history_head"},
     "invariants": {ID: {"name": "no gap", "verdict": "held" | "violated" | "not applicable",
                         "held": n, "violated": n, "not_applicable": n, "violations": n,
                         "clients": {LAB_ID: VERDICT, ...},
                         "violations_by_client": {LAB_ID: n, ...},
                         "notes": {LAB_ID: "why not applicable", ...},
                         "first": [{"client", "view", "ids", "times", "at", "explanation"}]}},
     "counts": {"total": {...}, "clients": {LAB_ID: {..., "exit": CODE, "stopped": bool}}},
     "schedule": {"windows": [{"name", "start", "end", "at", "until", "params"}],
                  "actions": {FAULT: {"start": n, "stop": n}}},
     "problems": ["..."]}

`times` are Unix times; `at` the same times in seconds since the run started.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from rt.chaos.check import (
    HELD,
    INVARIANTS,
    NOT_APPLICABLE,
    VIOLATED,
    CheckResult,
    Violation,
    check_run,
)
from rt.chaos.records import NotARun, load_run

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
TIMELINE_PNG = "timeline.png"

_MARK = {HELD: "✓ PASS", VIOLATED: "✗ FAIL", NOT_APPLICABLE: "- n/a"}
_TERMINAL_VIOLATIONS = 3  # per violated invariant in the terminal (all kept ones in the files)


def check_dir(path: str | os.PathLike, *, quiet: bool = False) -> int:
    """Re-check a recorded run; rewrite its report files; 0 held, 1 violated, 2 not a run."""
    try:
        run = load_run(path)
    except NotARun as e:
        print(f"rt chaos check: {e}", file=sys.stderr)
        return 2
    result = check_run(run)
    write_report(result)
    if not quiet:
        print(verdict_table(result))
    return result.exit_code


def write_report(result: CheckResult, run_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write report.json, report.md and timeline.png into the run's directory (or run_dir).

    The verdict is in the first two files before the picture is drawn, so a
    failure to draw loses nothing but the picture (it is reported on stderr).
    """
    from rt.chaos.timeline import draw_timeline  # Pillow is loaded only to draw

    out = Path(run_dir) if run_dir is not None else result.run.path
    out.mkdir(parents=True, exist_ok=True)
    written = [out / REPORT_JSON, out / REPORT_MD]
    written[0].write_bytes(
        orjson.dumps(report_json(result), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        + b"\n"
    )
    written[1].write_text(report_markdown(result), encoding="utf-8")
    try:
        draw_timeline(result, out / TIMELINE_PNG)
    except Exception as e:  # a drawing bug must not hide the verdict
        print(
            f"rt chaos: could not draw {TIMELINE_PNG} ({type(e).__name__}: {e}); the "
            "verdict in report.json stands. This is a bug in rt/chaos/timeline.py.",
            file=sys.stderr,
        )
    else:
        written.append(out / TIMELINE_PNG)
    return written


# --- report.json --------------------------------------------------------------------------


def _violation_json(result: CheckResult, v: Violation) -> dict[str, Any]:
    return {
        "client": v.client,
        "view": v.view,
        "ids": list(v.ids),
        "times": list(v.times),
        "at": [round(result.run.rel(t), 3) for t in v.times],
        "explanation": v.explanation,
    }


def report_json(result: CheckResult) -> dict[str, Any]:
    """The whole report as one JSON-ready object (the module docstring gives its shape)."""
    run, info = result.run, result.run.info
    invariants = {}
    for name, title in INVARIANTS.items():
        verdicts = result.verdicts[name]
        statuses = Counter(v.status for v in verdicts.values())
        invariants[name] = {
            "name": title,
            "verdict": result.status(name),
            "held": statuses[HELD],
            "violated": statuses[VIOLATED],
            "not_applicable": statuses[NOT_APPLICABLE],
            "violations": result.violation_totals[name],
            "clients": {c: v.status for c, v in verdicts.items()},
            "violations_by_client": {c: v.violations for c, v in verdicts.items() if v.violations},
            "notes": {c: v.note for c, v in verdicts.items() if v.note},
            "first": [_violation_json(result, v) for v in result.first[name]],
        }
    clients = {}
    for lab_id, counts in result.counts.items():
        a = result.activity[lab_id]
        clients[lab_id] = {
            **counts.to_json(),
            "exit": a.exit.code if a.exit else None,
            "stopped": a.stopped_at is not None,
        }
    return {
        "ok": result.ok,
        "exit": result.exit_code,
        "seed": info.seed,
        "command": info.command,
        "args": info.args,
        "run": {
            "directory": str(run.path),
            "started": info.started,
            "faults_stopped": info.faults_stopped,
            "stopped": info.stopped,
            "ended": info.ended,
            "duration": _duration(result),
            "catch_up_limit": info.catch_up_limit,
            "flows": list(info.flows),
            "clients": len(info.clients),
            "history_events": len(run.history),
            "history_head": result.history_head,
        },
        "invariants": invariants,
        "counts": {"total": result.total.to_json(), "clients": clients},
        "schedule": _schedule(result),
        "problems": list(run.problems),
    }


def _duration(result: CheckResult) -> float | None:
    info = result.run.info
    return None if info.ended is None else round(info.ended - info.started, 3)


def _schedule(result: CheckResult) -> dict[str, Any]:
    run = result.run
    actions: dict[str, Counter] = {}
    for a in run.actions:
        actions.setdefault(a.fault, Counter())[a.action] += 1
    return {
        "windows": [
            {
                "name": w.name,
                "start": w.start,
                "end": w.end,
                "at": round(run.rel(w.start), 3),
                "until": round(run.rel(w.end), 3),
                "params": w.params,
            }
            for w in sorted(run.windows, key=lambda w: w.start)
        ],
        "actions": {f: dict(c) for f, c in sorted(actions.items())},
    }


# --- the terminal table -------------------------------------------------------------------


def verdict_table(result: CheckResult) -> str:
    """The verdict for a terminal: one row per invariant, the first violations, the command."""
    info = result.run.info
    verdict = "PASS" if result.ok else "FAIL"
    duration = _duration(result)
    seed = "no seed" if info.seed is None else f"seed {info.seed}"
    lines = [
        f"rt chaos: {verdict}  {seed}, {len(info.clients)} clients, "
        f"{len(result.run.history)} events"
        + (f", {duration:.1f} s" if duration is not None else "")
        + f"  ({result.run.path})",
        "",
        f"  {'invariant':<20} {'verdict':<8} {'held':>6} {'violated':>9} {'n/a':>5} "
        f"{'violations':>11}",
    ]
    for name, title in INVARIANTS.items():
        statuses = Counter(v.status for v in result.verdicts[name].values())
        lines.append(
            f"  {title:<20} {_MARK[result.status(name)]:<8} {statuses[HELD]:>6} "
            f"{statuses[VIOLATED]:>9} {statuses[NOT_APPLICABLE]:>5} "
            f"{result.violation_totals[name]:>11}"
        )
    t = result.total
    lines += [
        "",
        f"  posts: {t.asked} asked, {t.acked} acked, {t.gave_up} given up; "
        f"{t.seen} events seen in {t.views} views ({t.resets} resets); "
        f"{t.deliveries} deliveries; {t.connections} connections; {t.bad} bad lines",
    ]
    for name, title in INVARIANTS.items():
        first = result.first[name]
        if not first:
            continue
        lines += ["", f"  {title}: {result.violation_totals[name]} violation(s), first:"]
        for v in first[:_TERMINAL_VIOLATIONS]:
            lines += textwrap.wrap(
                v.explanation, width=96, initial_indent="  - ", subsequent_indent="    "
            )
    for problem in result.run.problems:
        lines += textwrap.wrap(
            f"note: {problem}", width=96, initial_indent="  ", subsequent_indent="    "
        )
    lines += [
        "",
        f"  reproduce: {info.command or '(the run recorded no command)'}",
        f"  report:    {result.run.path / REPORT_MD}",
    ]
    return "\n".join(lines)


# --- report.md ----------------------------------------------------------------------------


def _md(text: Any) -> str:
    """A value for a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(result: CheckResult) -> str:
    """report.md: the same as report.json, for a person."""
    run, info = result.run, result.run.info
    duration = _duration(result)
    out = [f"# rt chaos run: {'PASS' if result.ok else 'FAIL'}", ""]
    out += [
        f"- seed: `{info.seed}`",
        f"- clients: {len(info.clients)}; flows: {', '.join(info.flows) or '-'}",
        f"- history: {len(run.history)} events, head {result.history_head}",
        f"- duration: {duration:.2f} s" if duration is not None else "- duration: unknown",
        f"- faults stopped at {_rel(run, info.faults_stopped)}, stop sent at "
        f"{_rel(run, info.stopped)}, catch-up limit {info.catch_up_limit:g} s",
        f"- directory: `{run.path}`",
        "",
        "Reproduce it with:",
        "",
        "```",
        info.command or "(the run recorded no command)",
        "```",
        "",
    ]

    out += [
        "## Verdicts",
        "",
        "| invariant | verdict | clients held | violated | not applicable | violations |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, title in INVARIANTS.items():
        statuses = Counter(v.status for v in result.verdicts[name].values())
        out.append(
            f"| {title} | {_MARK[result.status(name)]} | {statuses[HELD]} | "
            f"{statuses[VIOLATED]} | {statuses[NOT_APPLICABLE]} | "
            f"{result.violation_totals[name]} |"
        )
    out.append("")

    if not result.ok:
        out += ["## Violations", ""]
        for name, title in INVARIANTS.items():
            first = result.first[name]
            if not first:
                continue
            total = result.violation_totals[name]
            out += [
                f"### {title}: {total} violation(s)"
                + (f", the first {len(first)}" if total > len(first) else ""),
                "",
            ]
            for v in first:
                where = f"client `{v.client}`" + (f", view {v.view}" if v.view else "")
                ids = ", ".join(str(i) for i in v.ids) or "-"
                at = ", ".join(_rel(run, t) for t in v.times) or "-"
                out += [f"1. {v.explanation}", f"   ({where}; ids {ids}; times {at})"]
            out.append("")

    out += [
        "## Counts",
        "",
        "| client | user | transport | flows | asked | acked | given up | seen | views | "
        "resets | deliveries | connections | bad | exit | violated |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    t = result.total
    out.append(
        f"| **total** | | | | {t.asked} | {t.acked} | {t.gave_up} | {t.seen} | "
        f"{t.views} | {t.resets} | {t.deliveries} | {t.connections} | {t.bad} | | |"
    )
    for spec in info.clients:
        c, a = result.counts[spec.lab_id], result.activity[spec.lab_id]
        violated = [
            INVARIANTS[n]
            for n in INVARIANTS
            if result.verdicts[n].get(spec.lab_id)
            and result.verdicts[n][spec.lab_id].status == VIOLATED
        ]
        out.append(
            f"| {_md(spec.lab_id)} | {_md(spec.user)} | {_md(spec.transport)} | "
            f"{_md(','.join(a.flows))} | {c.asked} | {c.acked} | {c.gave_up} | "
            f"{c.seen} | {c.views} | {c.resets} | {c.deliveries} | {c.connections} | "
            f"{c.bad} | {a.exit.code if a.exit else '-'} | "
            f"{_md(', '.join(violated)) or '✓'} |"
        )
    out.append("")

    schedule = _schedule(result)
    out += ["## Fault schedule", ""]
    if schedule["windows"]:
        out += ["| fault | from | to | parameters |", "|---|---:|---:|---|"]
        for w in schedule["windows"]:
            params = ", ".join(f"{k}={v}" for k, v in w["params"].items()) or "-"
            out.append(
                f"| {_md(w['name'])} | +{w['at']:.2f} s | +{w['until']:.2f} s | {_md(params)} |"
            )
    else:
        out.append("No fault windows were recorded.")
    if schedule["actions"]:
        applied = "; ".join(
            f"{f}: " + ", ".join(f"{n} {action}" for action, n in c.items())
            for f, c in schedule["actions"].items()
        )
        out += ["", f"Applied: {applied}."]
    out += ["", "## Timeline", "", f"![timeline]({TIMELINE_PNG})", ""]
    if info.args:
        out += [
            "## Arguments",
            "",
            "```json",
            orjson.dumps(info.args, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode(),
            "```",
            "",
        ]
    if run.problems:
        out += ["## Problems with the records", ""]
        out += [f"- {p}" for p in run.problems]
        out.append("")
    return "\n".join(out)


def _rel(run, t: float | None) -> str:
    return "-" if t is None else f"+{run.rel(t):.2f} s"
