"""Synthetic race-lab runs for the checker's tests, written with rt.chaos.records' own writers.

`correct_run(...)` builds, in memory, a run in which every invariant holds:
clients follow flows "a" and "b" (every third client only "a"), each post
is asked of a client that follows its flow, stored once and acknowledged,
and every follower shows every event of its flows once, in order. Client
c1 loses its connection during the cut window (from +1.6 to +1.8 s) and
shows what was stored meanwhile when it reconnects, in the same view (a
resume, not a reset). c1's reconnect is a new stream that starts after its
old one's last delivery (a clean takeover).

A test plants one bug by editing the lists (`Synth.logs`, `history`,
`deliveries`) and then calls `write(path)`. Clients with the same flows
share their `seen` entries (so a big run builds and writes fast): replace an
entry in a log, never mutate one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from rt.chaos.records import (
    CLIENTS_DIR,
    CONNECTIONS_FILE,
    DELIVERIES_FILE,
    FAULTS_FILE,
    ClientRecorder,
    ClientSpec,
    ConnectionEvent,
    Delivery,
    Exited,
    FaultAction,
    FaultWindow,
    Printed,
    RunInfo,
    Sent,
    write_history,
    write_records,
    write_run_info,
)

T0 = 1_700_000_000.0
FLOWS = ("a", "b")
POSTS_FROM, POSTS_SPAN = 1.0, 3.0  # posts are asked from +1 s to +4 s
CUT = (1.5, 2.0)  # the cut window
DOWN = (1.6, 1.8)  # c1 has no connection
FAULTS_STOPPED, STOP, ENDED = 4.5, 5.5, 6.0


def seen(t: float, event: dict[str, Any]) -> Printed:
    return Printed(t, "seen", {"seen": dict(event)})


def view(t: float, cursor: int) -> Printed:
    return Printed(t, "view", {"view": cursor})


def acked(t: float, content: str, id_: int) -> Printed:
    return Printed(t, "acked", {"acked": content, "id": id_})


@dataclass
class Synth:
    info: RunInfo
    history: list[dict[str, Any]]
    logs: dict[str, list]
    connections: list[ConnectionEvent]
    windows: list[FaultWindow]
    actions: list[FaultAction]
    deliveries: list[Delivery] | None
    posts: dict[str, str] = field(default_factory=dict)  # content -> lab_id asked

    def event(self, id_: int) -> dict[str, Any]:
        return next(e for e in self.history if e["id"] == id_)

    def shown(self, lab_id: str) -> list[int]:
        return [
            e.rec["seen"]["id"]
            for e in self.logs[lab_id]
            if isinstance(e, Printed) and e.kind == "seen"
        ]

    def seen_index(self, lab_id: str, id_: int) -> int:
        """Where client lab_id's `seen` line of event id_ is in its log."""
        return next(
            i
            for i, e in enumerate(self.logs[lab_id])
            if isinstance(e, Printed) and e.kind == "seen" and e.rec["seen"]["id"] == id_
        )

    def write(self, path: Path, *, live: bool = False) -> Path:
        """Write the run directory. live=True writes client files a line at a time
        through ClientRecorder (as the runner will), else in one go."""
        write_run_info(path, self.info)
        write_history(path, self.history)
        (path / CLIENTS_DIR).mkdir(parents=True, exist_ok=True)
        lines: dict[int, bytes] = {}  # followers share `seen` entries: serialise each once
        for lab_id, entries in self.logs.items():
            if live:
                with ClientRecorder(path, lab_id) as rec:
                    for entry in entries:
                        rec.write(entry)
                continue
            with open(path / CLIENTS_DIR / f"{lab_id}.jsonl", "wb") as f:
                for entry in entries:
                    line = lines.get(id(entry))
                    if line is None:
                        line = lines[id(entry)] = orjson.dumps(entry.to_json()) + b"\n"
                    f.write(line)
        write_records(path / CONNECTIONS_FILE, self.connections)
        write_records(path / FAULTS_FILE, [*self.windows, *self.actions])
        if self.deliveries is not None:
            write_records(path / DELIVERIES_FILE, self.deliveries)
        return path


def correct_run(
    n_clients: int = 3, n_events: int = 30, *, stored_twice: int | None = None
) -> Synth:
    """A run in which every invariant holds (see the module docstring).

    stored_twice=k stores post k a second time, as a retry with a new uuid
    would (every follower shows both copies: only exactly-once is broken).
    """
    specs = tuple(
        ClientSpec(
            f"c{i}", f"u{i}", ("ws", "sse", "long_poll")[i % 3], ("a",) if i % 3 == 2 else FLOWS
        )
        for i in range(n_clients)
    )
    dt = POSTS_SPAN / n_events
    asked: list[tuple[float, ClientSpec, str, str]] = []
    stored: list[tuple[float, str, str, ClientSpec]] = []
    for k in range(n_events):
        flow = FLOWS[k % 2]
        candidates = [s for s in specs if flow in s.flows]
        poster = candidates[k % len(candidates)]
        t = T0 + POSTS_FROM + k * dt
        content = f"p{k}"
        asked.append((t, poster, flow, content))
        stored.append((t + 0.02, flow, content, poster))
        if k == stored_twice:
            stored.append((t + 0.02 + dt / 2, flow, content, poster))
    stored.sort(key=lambda s: s[0])
    history = [
        {
            "id": i,
            "flow": flow,
            "type": "message",
            "user": poster.user,
            "sent": int(t * 1000),
            "uuid": f"uuid-{i}",
            "content": content,
        }
        for i, (t, flow, content, poster) in enumerate(stored, 1)
    ]
    first_id: dict[str, int] = {}
    for e in history:
        first_id.setdefault(e["content"], e["id"])

    logs: dict[str, list] = {}
    shared_shows: dict[tuple, list] = {}  # clients with the same flows show the same lines
    connections: list[ConnectionEvent] = []
    deliveries: list[Delivery] = []
    conn_ids = iter(range(1, 10 * n_clients + 10))
    for spec in specs:
        entries: list = [view(T0 + 0.5, 0)]
        for t, poster, flow, content in asked:
            if poster is spec:
                entries.append(Sent(t, {"cmd": "post", "flow": flow, "content": content}))
                entries.append(acked(t + 0.04, content, first_id[content]))
        shows = shared_shows.get((spec.flows, spec.lab_id == "c1"))
        if shows is None:
            shows = shared_shows[(spec.flows, spec.lab_id == "c1")] = _shows(spec, history)
        entries += [entry for _, entry, _ in shows]
        entries += [
            Sent(T0 + STOP, {"cmd": "stop"}),
            Printed(T0 + STOP + 0.1, "stopped", {"stopped": True}),
            Exited(T0 + STOP + 0.2, 0),
        ]
        entries.sort(key=lambda entry: entry.t)  # stable: a view before what it shows
        logs[spec.lab_id] = entries

        first_conn = next(conn_ids)
        connections.append(ConnectionEvent(T0 + 0.3, first_conn, spec.lab_id, "open"))
        if spec.lab_id == "c1":
            connections.append(ConnectionEvent(T0 + DOWN[0], first_conn, spec.lab_id, "close"))
            second = next(conn_ids)
            connections.append(ConnectionEvent(T0 + DOWN[1], second, spec.lab_id, "open"))
            connections.append(ConnectionEvent(T0 + STOP + 0.15, second, spec.lab_id, "close"))
        else:
            connections.append(ConnectionEvent(T0 + STOP + 0.15, first_conn, spec.lab_id, "close"))
        for stream in (1, 2):
            batch = [(entry.t, entry.rec["seen"]) for _, entry, s in shows if s == stream]
            for i in range(0, len(batch), 10):  # the server delivers in batches
                chunk = batch[i : i + 10]
                deliveries.append(
                    Delivery(
                        chunk[0][0] - 0.005,
                        spec.user,
                        spec.lab_id,
                        f"{spec.lab_id}/{stream}",
                        spec.transport,
                        chunk[0][1]["id"],
                        chunk[-1][1]["id"],
                        len(chunk),
                    )
                )
    connections.sort(key=lambda c: c.t)
    deliveries.sort(key=lambda d: d.t)

    info = RunInfo(
        seed=7,
        command=f"rt chaos run --seed 7 --clients {n_clients} --flows a,b --faults cut:every=1s",
        args={"clients": n_clients, "faults": "cut:every=1s", "seed": 7},
        started=T0,
        faults_stopped=T0 + FAULTS_STOPPED,
        stopped=T0 + STOP,
        ended=T0 + ENDED,
        flows=FLOWS,
        clients=specs,
    )
    windows = [FaultWindow("cut", T0 + CUT[0], T0 + CUT[1], {"mode": "fin", "scope": "one"})]
    actions = [
        FaultAction(T0 + CUT[0], "cut", "start", (2,)),
        FaultAction(T0 + CUT[1], "cut", "stop", ()),
    ]
    return Synth(
        info,
        history,
        logs,
        connections,
        windows,
        actions,
        deliveries,
        {content: poster.lab_id for _, poster, _, content in asked},
    )


def _shows(spec: ClientSpec, history: list[dict[str, Any]]) -> list[tuple[float, Printed, int]]:
    """What a client of spec's flows shows: (t, its seen entry, the stream that delivered it)."""
    shows = []
    for e in history:
        if e["flow"] not in spec.flows:
            continue
        t = e["sent"] / 1000 + 0.03
        stream = 1
        if spec.lab_id == "c1" and t >= T0 + DOWN[0]:
            stream = 2
            # Stored while c1 was away (or just as it came back): shown in one
            # catch-up burst on reconnect, in id order, before anything live.
            if t < T0 + DOWN[1] + 0.01:
                t = T0 + DOWN[1] + 1e-6 * e["id"]
        shows.append((t, seen(t, e), stream))
    return shows
