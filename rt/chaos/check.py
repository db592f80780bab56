"""The race lab's history checker: LAB.md section 3, judged from a run directory.

`check_run(run)` reads nothing but the `Run` that `records.load_run` gave it
and returns a `CheckResult`: a `Verdict` for every invariant and client
(held, violated, or not applicable), counts, and for each violated
invariant its first violations (earliest first, at most `FIRST_VIOLATIONS`),
each with the client, view, ids and times involved and one sentence that
says what went wrong and where to look.

A client's **view** runs from one `view` line to the next (or to the end of
its log); a plain reconnect that resumes from the cursor continues the same
view, only a reset starts a new one. Views are numbered from 1. `seen` lines
printed before the first `view` line belong to no view: they are counted as
bad lines, not judged.

The invariants, as checked here (the table in LAB.md section 3 is the contract):

- no gap: in each view, every history event of the client's flows with an id
  above the view's cursor and below the highest id the view showed (the
  last one, unless order is violated too) was shown in that view.
- no duplicate: no view shows an id twice.
- order: no view shows a new id at or below its cursor, or below an id it
  showed before. (A repeated id is a duplicate, not also an order violation.)
- caught up: the client's last view showed the last history event of its
  flows (or started at or after it), no later than
  max(faults_stopped, that event's sent / 1000) + catch_up_limit. A client
  with no view fails it; a client whose flows hold no event holds it.
- faithful: every shown event has a history event of its id, equal in
  type and flow, and in content and tags where the shown event has them (a
  client may show a trimmed object). The content of a message that was
  later deleted is blank in history, so it is not compared.
- exactly-once posts: a content the client was asked to post is stored (as
  a `message`) at most once, and every `acked` names the id it is stored at.
  (An ack naming a message deleted since is accepted: history blanks the
  content of deleted messages, so there is nothing left to match.)
- nothing in limbo: every post the client was asked for was acknowledged or
  given up before it printed `stopped` (or before its log ended).
- one live stream: for each (user, client id) in deliveries.jsonl, no two
  streams' delivery intervals [first t, last t] overlap (touching is fine).
  A key is attributed to the lab client whose lab_id is the client id, else
  to every lab client of that user, else to a pseudo-client "user/client".

Everything is linear in the size of the records (sets, dicts, bisection
over sorted id lists), so thousands of events for hundreds of clients check
in a second or two.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rt.chaos.records import Bad, ClientSpec, Exited, Printed, Run, Sent

# Invariant ids (report.json's keys) and their names in LAB.md section 3.
INVARIANTS: dict[str, str] = {
    "no_gap": "no gap",
    "no_duplicate": "no duplicate",
    "order": "order",
    "caught_up": "caught up",
    "faithful": "faithful",
    "exactly_once": "exactly-once posts",
    "no_limbo": "nothing in limbo",
    "one_live_stream": "one live stream",
}

HELD, VIOLATED, NOT_APPLICABLE = "held", "violated", "not applicable"

FIRST_VIOLATIONS = 10  # kept per invariant, earliest first (all are counted)
_IDS_SHOWN = 20  # ids carried by one violation (a gap may span thousands)


@dataclass(frozen=True, slots=True)
class Violation:
    """One violation: who, in which view, the ids and Unix times involved, and why it matters.

    `t` is when the violation became evident (what "first" sorts by);
    `times` are the times the explanation refers to, in its order.
    """

    invariant: str
    client: str
    view: int | None
    ids: tuple[int, ...]
    times: tuple[float, ...]
    t: float
    explanation: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """One invariant for one client: HELD, VIOLATED or NOT_APPLICABLE, and how many violations."""

    invariant: str
    client: str
    status: str
    violations: int = 0
    note: str = ""


@dataclass(slots=True)
class Counts:
    """What one client (or the whole run) did; `bad` counts malformed output lines."""

    asked: int = 0
    acked: int = 0
    gave_up: int = 0
    seen: int = 0
    views: int = 0
    resets: int = 0
    deliveries: int = 0
    connections: int = 0
    bad: int = 0

    def add(self, other: Counts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class View:
    """One view of one client: its cursor, when it began, and what it showed, (t, event) each."""

    index: int
    cursor: int
    t: float
    shown: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


@dataclass(slots=True)
class ClientActivity:
    """One client's log, sorted into what the invariants need."""

    spec: ClientSpec
    flows: tuple[str, ...]
    views: list[View] = field(default_factory=list)
    asked: dict[str, float] = field(default_factory=dict)  # content -> when asked (first time)
    acked: list[tuple[float, str, int]] = field(default_factory=list)  # (t, content, id)
    gave_up: dict[str, tuple[float, str]] = field(default_factory=dict)  # content -> (t, error)
    settled_before_stop: set[str] = field(default_factory=set)  # acked or given up by `stopped`
    stop_sent: float | None = None
    stopped_at: float | None = None  # the client's {"stopped": true}
    exit: Exited | None = None
    last_t: float | None = None
    bad: int = 0

    @classmethod
    def from_log(cls, spec: ClientSpec, flows: tuple[str, ...], entries: list) -> ClientActivity:
        a = cls(spec, flows)
        shown = None  # the current view's list: `seen` lines are most of a log, so fast path
        for entry in entries:
            if type(entry) is Printed:
                if entry.kind == "seen":
                    if shown is not None:
                        shown.append((entry.t, entry.rec["seen"]))
                    else:
                        a.bad += 1  # shown before any view: the client broke LAB.md section 2
                    continue
                a._printed(entry)
                if entry.kind == "view":
                    shown = a.views[-1].shown
            elif type(entry) is Sent:
                cmd = entry.cmd.get("cmd")
                if cmd == "post" and isinstance(entry.cmd.get("content"), str):
                    a.asked.setdefault(entry.cmd["content"], entry.t)
                elif cmd == "stop" and a.stop_sent is None:
                    a.stop_sent = entry.t
            elif type(entry) is Bad:
                a.bad += 1
            elif type(entry) is Exited:
                a.exit = entry
        a.last_t = max((e.t for e in entries), default=None)
        return a

    def _printed(self, p: Printed) -> None:
        rec = p.rec
        if p.kind == "view":
            self.views.append(View(len(self.views) + 1, rec["view"], p.t))
        elif p.kind == "acked":
            self.acked.append((p.t, rec["acked"], rec["id"]))
            if self.stopped_at is None:
                self.settled_before_stop.add(rec["acked"])
        elif p.kind == "gave_up":
            self.gave_up.setdefault(rec["gave_up"], (p.t, str(rec.get("error"))))
            if self.stopped_at is None:
                self.settled_before_stop.add(rec["gave_up"])
        elif p.kind == "stopped" and self.stopped_at is None:
            self.stopped_at = p.t

    def counts(self) -> Counts:
        views = len(self.views)
        return Counts(
            asked=len(self.asked),
            acked=len({c for _, c, _ in self.acked}),
            gave_up=len(self.gave_up),
            seen=sum(len(v.shown) for v in self.views),
            views=views,
            resets=max(0, views - 1),
            bad=self.bad,
        )


@dataclass(slots=True)
class CheckResult:
    """The checker's findings. `verdicts[invariant][client]`; `first[invariant]` earliest first."""

    run: Run
    verdicts: dict[str, dict[str, Verdict]]
    first: dict[str, list[Violation]]
    violation_totals: dict[str, int]
    counts: dict[str, Counts]
    total: Counts
    activity: dict[str, ClientActivity]
    history_head: int | None

    def status(self, invariant: str) -> str:
        """The run's verdict on one invariant: violated by any client, else held by any."""
        statuses = {v.status for v in self.verdicts[invariant].values()}
        if VIOLATED in statuses:
            return VIOLATED
        return HELD if HELD in statuses else NOT_APPLICABLE

    @property
    def ok(self) -> bool:
        return not any(self.violation_totals.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


# --- the history, indexed ---------------------------------------------------------------


class HistoryIndex:
    """The server's log, indexed by id, by flow (sorted ids) and by posted content."""

    def __init__(self, history: list[dict[str, Any]]) -> None:
        self.by_id: dict[int, dict[str, Any]] = {}
        by_flow: dict[str, list[int]] = defaultdict(list)
        self.stored: dict[str, list[int]] = defaultdict(list)  # message content -> ids
        self.deleted: set[int] = set()  # ids of messages that were deleted
        for event in history:  # in id order (load_run sorted it)
            self.by_id[event["id"]] = event
            by_flow[event["flow"]].append(event["id"])
            if event["type"] == "message" and isinstance(event.get("content"), str):
                self.stored[event["content"]].append(event["id"])
            elif event["type"] == "delete" and isinstance(event.get("message"), int):
                self.deleted.add(event["message"])
        self._by_flow = dict(by_flow)
        self._merged: dict[frozenset[str], list[int]] = {}

    def ids(self, flows: tuple[str, ...]) -> list[int]:
        """Sorted ids of the events of these flows (cached: many clients share flow sets)."""
        key = frozenset(flows)
        if key not in self._merged:
            self._merged[key] = list(heapq.merge(*(self._by_flow.get(f, []) for f in key)))
        return self._merged[key]

    def content_was_blanked(self, event: dict[str, Any]) -> bool:
        """Deleting a message blanks content in its message and edit events (PROTOCOL.md 2)."""
        message = event["id"] if event["type"] == "message" else event.get("message")
        return event.get("content") == "" and message in self.deleted


# --- the per-client invariants ----------------------------------------------------------


class _Words:
    """Formatting shared by the explanations: times since start, ids, short values."""

    def __init__(self, run: Run) -> None:
        self.started = run.info.started

    def at(self, t: float | None) -> str:
        return "?" if t is None else f"+{t - self.started:.2f} s"

    @staticmethod
    def ids(ids: list[int], total: int | None = None) -> str:
        total = len(ids) if total is None else total
        head = ", ".join(str(i) for i in ids[:5])
        return head if total <= 5 else f"{head} and {total - 5} more"

    @staticmethod
    def value(v: Any) -> str:
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."


def _no_gap(ctx: _Context, a: ClientActivity) -> Iterator[Violation]:
    ids = ctx.history.ids(a.flows)
    for view in a.views:
        shown = {e["id"] for _, e in view.shown}
        highest = max(shown, default=view.cursor)
        lo, hi = bisect_right(ids, view.cursor), bisect_left(ids, highest)
        missing = [i for i in ids[lo:hi] if i not in shown]
        if not missing:
            continue
        after = next((t, e["id"]) for t, e in view.shown if e["id"] > missing[0])
        stored = ctx.history.by_id[missing[0]].get("sent")
        stored_at = ctx.w.at(stored / 1000) if isinstance(stored, int | float) else "?"
        yield Violation(
            "no_gap",
            a.spec.lab_id,
            view.index,
            tuple(missing[:_IDS_SHOWN]),
            (after[0],),
            after[0],
            f"{a.spec.lab_id}'s view {view.index} (from cursor {view.cursor}) showed "
            f"{after[1]} at {ctx.w.at(after[0])} but never {ctx.w.ids(missing)} "
            f"({len(missing)} event(s) of its flows, the first stored at {stored_at}): "
            "the server's replay skipped them or the client resumed past them; check that "
            "it reconnects with the cursor and epoch of the last event it showed.",
        )


def _no_duplicate(ctx: _Context, a: ClientActivity) -> Iterator[Violation]:
    for view in a.views:
        first_shown: dict[int, float] = {}
        for t, event in view.shown:
            i = event["id"]
            if i not in first_shown:
                first_shown[i] = t
                continue
            yield Violation(
                "no_duplicate",
                a.spec.lab_id,
                view.index,
                (i,),
                (first_shown[i], t),
                t,
                f"{a.spec.lab_id}'s view {view.index} showed {i} twice, at "
                f"{ctx.w.at(first_shown[i])} and again at {ctx.w.at(t)}: the client resumed "
                "from a cursor below the last event it showed (or the server replayed it); "
                "resume from the last id shown and drop any id at or below it.",
            )


def _order(ctx: _Context, a: ClientActivity) -> Iterator[Violation]:
    for view in a.views:
        shown: set[int] = set()
        highest, highest_t = view.cursor, view.t
        for t, event in view.shown:
            i = event["id"]
            if i in shown:
                continue  # a duplicate: the no-duplicate check reports it
            shown.add(i)
            if i <= view.cursor:
                yield Violation(
                    "order",
                    a.spec.lab_id,
                    view.index,
                    (i, view.cursor),
                    (t,),
                    t,
                    f"{a.spec.lab_id}'s view {view.index} showed {i} at {ctx.w.at(t)}, at or "
                    f"below its own cursor {view.cursor}: a view starts after its cursor; the "
                    "client showed an event from before the ready it began at.",
                )
            elif i < highest:
                yield Violation(
                    "order",
                    a.spec.lab_id,
                    view.index,
                    (i, highest),
                    (highest_t, t),
                    t,
                    f"{a.spec.lab_id}'s view {view.index} showed {i} at {ctx.w.at(t)} after "
                    f"it had shown {highest} at {ctx.w.at(highest_t)}: events must be shown in "
                    "id order; check how the client merges catch-up with live events.",
                )
            if i > highest:
                highest, highest_t = i, t


def _caught_up(ctx: _Context, a: ClientActivity) -> Iterator[Violation]:
    info = ctx.run.info
    name = a.spec.lab_id
    if not a.views:
        t = info.faults_stopped or info.started
        yield Violation(
            "caught_up",
            name,
            None,
            (),
            (),
            t,
            f"{name} never printed a view line: it never got a ready through the proxy, or it "
            "does not speak the driver interface (LAB.md section 2); see its stderr.",
        )
        return
    ids = ctx.history.ids(a.flows)
    if not ids:
        return
    head = ctx.history.by_id[ids[-1]]
    faults_stopped = info.faults_stopped if info.faults_stopped is not None else info.started
    sent = head.get("sent")
    stored = sent / 1000 if isinstance(sent, int | float) else faults_stopped
    deadline = max(faults_stopped, stored) + info.catch_up_limit
    last = a.views[-1]
    if last.cursor >= head["id"]:
        reached: float | None = last.t
    else:
        reached = next((t for t, e in last.shown if e["id"] == head["id"]), None)
    why = (
        f"it had until {ctx.w.at(deadline)} (the later of faults stopped at "
        f"{ctx.w.at(faults_stopped)} and the head stored at {ctx.w.at(stored)}, plus "
        f"{info.catch_up_limit:g} s)"
    )
    if reached is None:
        got = max((e["id"] for _, e in last.shown), default=last.cursor)
        got_t = max((t for t, _ in last.shown), default=last.t)
        yield Violation(
            "caught_up",
            name,
            last.index,
            (head["id"], got),
            (deadline, got_t),
            deadline,
            f"{name}'s last view (view {last.index}, from cursor {last.cursor}) never reached "
            f"the head of its flows, {head['id']}: it got to {got} by {ctx.w.at(got_t)}, and "
            f"{why}; the client is stuck (a stream it never reconnected, or a reset it "
            "never followed).",
        )
    elif reached > deadline:
        yield Violation(
            "caught_up",
            name,
            last.index,
            (head["id"],),
            (reached, deadline),
            reached,
            f"{name}'s last view reached the head {head['id']} only at {ctx.w.at(reached)}, "
            f"{reached - deadline:.2f} s late: {why}; the client recovers too slowly (check "
            "its reconnect backoff and heartbeat timeout).",
        )


_COMPARED = ("type", "flow", "content", "tags")


def _faithful(ctx: _Context, a: ClientActivity) -> Iterator[Violation]:
    by_id = ctx.history.by_id
    for view in a.views:
        for t, event in view.shown:
            i = event["id"]
            stored = by_id.get(i)
            if stored is None:
                yield Violation(
                    "faithful",
                    a.spec.lab_id,
                    view.index,
                    (i,),
                    (t,),
                    t,
                    f"{a.spec.lab_id}'s view {view.index} showed {i} at {ctx.w.at(t)}, but "
                    "history has no event with that id in the run's flows: the client "
                    "invented it or mislabelled its id.",
                )
                continue
            if event == stored:
                continue  # the usual case, compared at C speed
            differs = [
                k
                for k in _COMPARED
                if (k in event or k in ("type", "flow"))
                and event.get(k) != stored.get(k)
                and not (k == "content" and ctx.history.content_was_blanked(stored))
            ]
            if differs:
                what = "; ".join(
                    f"{k} {ctx.w.value(event.get(k))} where history has "
                    f"{ctx.w.value(stored.get(k))}"
                    for k in differs
                )
                yield Violation(
                    "faithful",
                    a.spec.lab_id,
                    view.index,
                    (i,),
                    (t,),
                    t,
                    f"{a.spec.lab_id}'s view {view.index} showed {i} at {ctx.w.at(t)} with "
                    f"{what}: the client altered or mis-parsed a stored event; show events "
                    "exactly as received.",
                )


def _exactly_once(ctx: _Context, a: ClientActivity) -> Iterator[Violation]:
    name = a.spec.lab_id
    for content, t in a.asked.items():
        ids = ctx.history.stored.get(content, [])
        if len(ids) > 1:
            yield Violation(
                "exactly_once",
                name,
                None,
                tuple(ids[:_IDS_SHOWN]),
                (t,),
                t,
                f"the post {ctx.w.value(content)} asked of {name} at {ctx.w.at(t)} is stored "
                f"{len(ids)} times (ids {ctx.w.ids(ids)}): a retry went out with a new uuid; "
                "a client must resend a post with the uuid of its first attempt.",
            )
    for t, content, i in a.acked:
        ids = ctx.history.stored.get(content, [])
        if not ids and i in ctx.history.deleted:
            continue  # deleted since: history blanked its content, so it cannot be matched
        if not ids:
            yield Violation(
                "exactly_once",
                name,
                None,
                (i,),
                (t,),
                t,
                f"{name} reported {ctx.w.value(content)} acknowledged as {i} at {ctx.w.at(t)}, "
                "but history has no such post: the client claimed an ack the server never "
                "gave (or the server lost a stored event).",
            )
        elif i not in ids:
            yield Violation(
                "exactly_once",
                name,
                None,
                (i, *ids[:_IDS_SHOWN]),
                (t,),
                t,
                f"{name} reported {ctx.w.value(content)} acknowledged as {i} at {ctx.w.at(t)}, "
                f"but history stores it as {ctx.w.ids(ids)}: the client matched the ack to "
                "the wrong post; match acks by uuid.",
            )


def _no_limbo(ctx: _Context, a: ClientActivity) -> Iterator[Violation]:
    name = a.spec.lab_id
    if a.stopped_at is not None:
        end, when = a.stopped_at, f"before it printed stopped at {ctx.w.at(a.stopped_at)}"
    else:
        end = a.last_t if a.last_t is not None else ctx.run.info.started
        when = f"by the end of its log at {ctx.w.at(end)} (it never printed stopped)"
    for content, t in a.asked.items():
        if content in a.settled_before_stop:
            continue
        ids = ctx.history.stored.get(content, [])
        stored = f" (the server stored it as {ids[0]})" if ids else " (history has no such post)"
        yield Violation(
            "no_limbo",
            name,
            None,
            tuple(ids[:1]),
            (t, end),
            t,
            f"{name} was asked to post {ctx.w.value(content)} at {ctx.w.at(t)} and neither "
            f"acknowledged nor gave it up {when}{stored}: a client must settle every post "
            "before it stops.",
        )


# Per-client invariants: (check, whether it applies to this client at all).
_PER_CLIENT: dict[
    str,
    tuple[
        Callable[[_Context, ClientActivity], Iterator[Violation]], Callable[[ClientActivity], str]
    ],
] = {
    "no_gap": (_no_gap, lambda a: "" if a.views else "no view"),
    "no_duplicate": (_no_duplicate, lambda a: "" if a.views else "no view"),
    "order": (_order, lambda a: "" if a.views else "no view"),
    "caught_up": (_caught_up, lambda a: ""),
    "faithful": (_faithful, lambda a: "" if a.views else "no view"),
    "exactly_once": (_exactly_once, lambda a: "" if a.asked or a.acked else "no posts"),
    "no_limbo": (_no_limbo, lambda a: "" if a.asked else "no posts"),
}


# --- one live stream ----------------------------------------------------------------------


@dataclass(slots=True)
class _Span:
    """What one stream delivered: from its first batch's time to its last one's."""

    name: str
    transport: str
    start: float
    end: float
    batches: list[tuple[float, int, int]] = field(default_factory=list)  # (t, first, last)


def _one_live_stream(ctx: _Context) -> dict[tuple[str, str], list[Violation]]:
    """Overlapping delivery spans per (user, client id), by a sweep over sorted starts."""
    spans: dict[tuple[str, str], dict[str, _Span]] = defaultdict(dict)
    for d in ctx.run.deliveries or ():
        streams = spans[(d.user, d.client)]
        span = streams.get(d.stream)
        if span is None:
            span = streams[d.stream] = _Span(d.stream, d.transport, d.t, d.t)
        span.start, span.end = min(span.start, d.t), max(span.end, d.t)
        span.batches.append((d.t, d.first, d.last))
    found: dict[tuple[str, str], list[Violation]] = {}
    for key, streams in spans.items():
        ordered = sorted(streams.values(), key=lambda span: span.start)
        live = ordered[0]  # the span that reaches furthest so far
        for span in ordered[1:]:
            if span.start < live.end:  # touching (start == end) is a clean handover
                found.setdefault(key, []).append(_overlap(ctx, key, live, span))
            if span.end > live.end:
                live = span
    return found


def _overlap(ctx: _Context, key: tuple[str, str], old: _Span, new: _Span) -> Violation:
    user, client = key
    t, first, last = min(b for b in new.batches if b[0] <= old.end)
    owner = ", ".join(ctx.owners(user, client)) or f"{user}/{client}"
    return Violation(
        "one_live_stream",
        owner,
        None,
        (first, last),
        (old.start, old.end, new.start, new.end),
        t,
        f"user {user!r} client id {client!r} ({owner}): stream {new.name} ({new.transport}) "
        f"delivered {first}..{last} at {ctx.w.at(t)} while stream {old.name} "
        f"({old.transport}) was still delivering ({ctx.w.at(old.start)} to "
        f"{ctx.w.at(old.end)}): the server let two streams of one client id deliver at once; "
        "takeover must detach the old stream before the new one delivers (PROTOCOL.md "
        "section 3).",
    )


# --- the whole run ------------------------------------------------------------------------


class _Context:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.history = HistoryIndex(run.history)
        self.w = _Words(run)
        self._by_user: dict[str, list[str]] = defaultdict(list)
        for spec in run.info.clients:
            self._by_user[spec.user].append(spec.lab_id)

    def owners(self, user: str, client: str) -> list[str]:
        """The lab clients a (user, client id) of the delivery record belongs to."""
        mine = self._by_user.get(user, [])
        return [client] if client in mine else list(mine)


def check_run(run: Run) -> CheckResult:
    """Judge a loaded run against every invariant of LAB.md section 3."""
    ctx = _Context(run)
    verdicts: dict[str, dict[str, Verdict]] = {name: {} for name in INVARIANTS}
    kept: dict[str, list[Violation]] = {name: [] for name in INVARIANTS}
    totals = dict.fromkeys(INVARIANTS, 0)
    counts: dict[str, Counts] = {}
    activity: dict[str, ClientActivity] = {}

    opens: dict[str, int] = defaultdict(int)
    for c in run.connections:
        if c.event == "open":
            opens[c.label] += 1

    for spec in run.info.clients:
        log = run.clients.get(spec.lab_id)
        a = ClientActivity.from_log(spec, run.info.client_flows(spec), log.entries if log else [])
        activity[spec.lab_id] = a
        counts[spec.lab_id] = a.counts()
        counts[spec.lab_id].connections = opens.get(spec.lab_id, 0)
        for name, (check, not_applicable) in _PER_CLIENT.items():
            reason = not_applicable(a)
            if reason:
                verdicts[name][spec.lab_id] = Verdict(
                    name, spec.lab_id, NOT_APPLICABLE, note=reason
                )
                continue
            found = sorted(check(ctx, a), key=lambda v: v.t)
            totals[name] += len(found)
            kept[name] += found[:FIRST_VIOLATIONS]
            verdicts[name][spec.lab_id] = Verdict(
                name, spec.lab_id, VIOLATED if found else HELD, len(found)
            )

    _judge_streams(ctx, verdicts, kept, totals, counts)

    total = Counts()
    for client_counts in counts.values():
        total.add(client_counts)
    first = {name: sorted(vs, key=lambda v: v.t)[:FIRST_VIOLATIONS] for name, vs in kept.items()}
    head = run.history[-1]["id"] if run.history else None
    return CheckResult(run, verdicts, first, totals, counts, total, activity, head)


def _judge_streams(
    ctx: _Context,
    verdicts: dict[str, dict[str, Verdict]],
    kept: dict[str, list[Violation]],
    totals: dict[str, int],
    counts: dict[str, Counts],
) -> None:
    """One live stream, from the delivery record: verdicts, violations, deliveries counts."""
    name = "one_live_stream"
    run = ctx.run
    if run.deliveries is None:
        for spec in run.info.clients:
            verdicts[name][spec.lab_id] = Verdict(
                name, spec.lab_id, NOT_APPLICABLE, note="no delivery record"
            )
        return
    delivered: dict[str, int] = defaultdict(int)
    for d in run.deliveries:
        for owner in ctx.owners(d.user, d.client):
            delivered[owner] += 1
    for lab_id, c in counts.items():
        c.deliveries = delivered.get(lab_id, 0)
    per_owner: dict[str, int] = defaultdict(int)
    for (user, client), found in _one_live_stream(ctx).items():
        totals[name] += len(found)
        kept[name] += found[:FIRST_VIOLATIONS]
        for owner in ctx.owners(user, client) or [f"{user}/{client}"]:
            per_owner[owner] += len(found)
    for spec in run.info.clients:
        n = per_owner.pop(spec.lab_id, 0)
        status = VIOLATED if n else HELD if delivered.get(spec.lab_id) else NOT_APPLICABLE
        verdicts[name][spec.lab_id] = Verdict(
            name, spec.lab_id, status, n, note="" if delivered.get(spec.lab_id) else "no deliveries"
        )
    for owner, n in per_owner.items():  # keys that belong to no lab client
        verdicts[name][owner] = Verdict(name, owner, VIOLATED, n, note="not a lab client")
