"""The race lab's run directory: what `rt chaos run` records, and how to read it back.

A run directory holds everything the checker judges, as plain files, so
`rt chaos check DIR` can re-judge a run offline, long after it ended. Every
time `t` is a Unix time in seconds, a float from `time.time()` on the lab's
machine. One JSON object per line in every `.jsonl` file.

`run.json`, written at the start and rewritten at the end::

    {"seed": 42, "command": "rt chaos run --seed 42 ...",   # the one line that reproduces the run
     "args": {...},                                          # the run's arguments, for the report
     "started": T, "faults_stopped": T, "stopped": T, "ended": T,
     "catch_up_limit": 10.0,                                 # seconds, default 10
     "flows": ["a", "b"],
     "clients": [{"lab_id": "c0", "user": "u0", "transport": "ws", "flows": ["a"]}, ...]}

`faults_stopped` is when the faults stopped, `stopped` when the lab sent
`stop` to the clients; either may be null while the run is under way (the
checker then measures catch-up from `started`). A client with no `flows`
follows the run's.

`history.jsonl`: the server's log at the end of the run, every stored event
of the run's flows in id order, each the stored event object as the server
sends it (PROTOCOL.md section 2): `{"id", "flow", "type", "user", "sent"
(ms), "uuid", "content", ...}` (tag events add `message`, `add`, `remove`,
`tags`).

`clients/<lab_id>.jsonl`: one client under test, in the order things happened::

    {"t": T, "in": {"cmd": "post", "flow": F, "content": C}}    # a command the lab sent it
    {"t": T, "in": {"cmd": "stop"}}
    {"t": T, "out": {"view": CURSOR}}                          # a line it printed (LAB.md section 2)
    {"t": T, "out": {"seen": EVENT}}
    {"t": T, "out": {"acked": C, "id": N}}
    {"t": T, "out": {"gave_up": C, "error": CODE}}
    {"t": T, "out": {"stopped": true}}
    {"t": T, "bad": "<the line as printed>"}                   # stdout that is none of the above
    {"t": T, "exit": CODE}                                     # the process ended (null: unknown)

A line the client printed that is not one of the five output records (not
JSON, not an object, a `seen` without an integer `id`, a string `flow` and
a string `type`...) is kept verbatim as `bad`. The reader applies the same
test, so a hand-edited or truncated file gives `Bad` entries too, never an
exception.

`connections.jsonl`, from the fault proxy (each client has its own proxy
listener, labelled by its lab_id)::

    {"t": T, "conn": ID, "label": LAB_ID, "event": "open" | "close"}

`faults.jsonl`: the schedule drawn from the seed, then what was applied::

    {"window": {"name": "stall", "start": T, "end": T, "params": {"for": 3.0, ...}}}
    {"t": T, "fault": "stall", "action": "start" | "stop", "conns": [ID, ...]}

Window times are Unix times like every other. The reader also takes the
fault proxy's own spellings: a window object may say `fault` for `name`, an
action may be `hit` (the fault applied to one more connection) and may carry
more keys (`"window": ID`, `"id"`, `"spec"`), which it ignores.

`deliveries.jsonl`, from the server's own record of what each stream
delivered, one line per batch (`stream` is unique across server restarts)::

    {"t": T, "user": U, "client": CLIENT_ID, "stream": S, "transport": "ws",
     "first": ID, "last": ID, "n": COUNT}

Writers: `write_run_info`, `write_history`, `RecordWriter` (any of the
`.jsonl` files, a line at a time, flushed), `write_records` (a whole
`.jsonl` file at once) and `ClientRecorder` (one client's file: it sorts
what the client printed into `out` or `bad`). Reader: `load_run`, which
raises `NotARun` when the directory is not a run and otherwise tolerates
damage, listing it in `Run.problems`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

RUN_FILE = "run.json"
HISTORY_FILE = "history.jsonl"
CLIENTS_DIR = "clients"
CONNECTIONS_FILE = "connections.jsonl"
FAULTS_FILE = "faults.jsonl"
DELIVERIES_FILE = "deliveries.jsonl"

DEFAULT_CATCH_UP_LIMIT = 10.0

# What a client may print (LAB.md section 2), by the key that names the record.
OUTPUT_KINDS = ("view", "seen", "acked", "gave_up", "stopped")

# How many damaged lines of one file are quoted in Run.problems (all are counted).
_QUOTED_PROBLEMS = 3


class NotARun(Exception):
    """The directory is not a race-lab run (no run.json, or no history): say which and why."""


# --- run.json ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One client under test as the lab started it."""

    lab_id: str
    user: str
    transport: str
    flows: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "lab_id": self.lab_id,
            "user": self.user,
            "transport": self.transport,
            "flows": list(self.flows),
        }


@dataclass(frozen=True, slots=True)
class RunInfo:
    """run.json: what was run, how to run it again, and when its phases began."""

    seed: int | None
    command: str
    args: dict[str, Any]
    started: float
    faults_stopped: float | None
    stopped: float | None
    ended: float | None
    flows: tuple[str, ...]
    clients: tuple[ClientSpec, ...]
    catch_up_limit: float = DEFAULT_CATCH_UP_LIMIT

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "command": self.command,
            "args": self.args,
            "started": self.started,
            "faults_stopped": self.faults_stopped,
            "stopped": self.stopped,
            "ended": self.ended,
            "catch_up_limit": self.catch_up_limit,
            "flows": list(self.flows),
            "clients": [c.to_json() for c in self.clients],
        }

    @classmethod
    def from_json(cls, obj: Any) -> RunInfo:
        """Parse run.json's object; ValueError says which field is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("run.json is not a JSON object")
        try:
            clients = tuple(
                ClientSpec(
                    lab_id=_str(c["lab_id"], "lab_id"),
                    user=_str(c["user"], "user"),
                    transport=_str(c.get("transport", "auto"), "transport"),
                    flows=tuple(_str(f, "flow") for f in c.get("flows") or ()),
                )
                for c in obj.get("clients") or ()
            )
            return cls(
                seed=obj.get("seed"),
                command=str(obj.get("command") or ""),
                args=dict(obj.get("args") or {}),
                started=_time(obj["started"], "started"),
                faults_stopped=_optional_time(obj.get("faults_stopped"), "faults_stopped"),
                stopped=_optional_time(obj.get("stopped"), "stopped"),
                ended=_optional_time(obj.get("ended"), "ended"),
                flows=tuple(_str(f, "flow") for f in obj.get("flows") or ()),
                clients=clients,
                catch_up_limit=_time(
                    obj.get("catch_up_limit", DEFAULT_CATCH_UP_LIMIT), "catch_up_limit"
                ),
            )
        except KeyError as e:
            raise ValueError(f"run.json lacks the field {e.args[0]!r}") from None
        except (TypeError, AttributeError) as e:
            raise ValueError(f"run.json has a malformed field ({e})") from None

    def client_flows(self, spec: ClientSpec) -> tuple[str, ...]:
        """The flows a client follows: its own list, or the run's when it has none."""
        return spec.flows or self.flows


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {value!r}")
    return value


def _time(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a number, not {value!r}")
    return float(value)


def _optional_time(value: Any, name: str) -> float | None:
    return None if value is None else _time(value, name)


# --- the .jsonl records -----------------------------------------------------------------

# A client's entries (Sent, Printed, Bad, Exited) are not frozen, unlike the other
# records: a run reads hundreds of thousands of them, and a frozen dataclass takes
# three times as long to build. Treat them as read-only all the same.


@dataclass(slots=True)
class Sent:
    """A command the lab wrote to a client's stdin: {"cmd": "post", ...} or {"cmd": "stop"}."""

    t: float
    cmd: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "in": self.cmd}


@dataclass(slots=True)
class Printed:
    """A well-formed output record the client printed; `kind` is its key (OUTPUT_KINDS)."""

    t: float
    kind: str
    rec: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "out": self.rec}


@dataclass(slots=True)
class Bad:
    """A line on the client's stdout that is not an output record, kept as printed."""

    t: float
    line: str

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "bad": self.line}


@dataclass(slots=True)
class Exited:
    """The client's process ended with `code` (None when the lab could not tell)."""

    t: float
    code: int | None

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "exit": self.code}


ClientEntry = Sent | Printed | Bad | Exited


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """The fault proxy opened or closed connection `conn` of the client labelled `label`."""

    t: float
    conn: int | str
    label: str
    event: str  # "open" | "close"

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "conn": self.conn, "label": self.label, "event": self.event}


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """One fault window of the schedule drawn from the seed."""

    name: str
    start: float
    end: float
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "window": {
                "name": self.name,
                "start": self.start,
                "end": self.end,
                "params": self.params,
            }
        }


@dataclass(frozen=True, slots=True)
class FaultAction:
    """The proxy (or the lab, for kill and pause) started, applied or stopped a fault on `conns`."""

    t: float
    fault: str
    action: str  # "start" | "stop", or "hit" (applied to one more connection)
    conns: tuple[int | str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "fault": self.fault, "action": self.action, "conns": list(self.conns)}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One batch that stream `stream` of (user, client) delivered, ids first..last."""

    t: float
    user: str
    client: str
    stream: str
    transport: str
    first: int
    last: int
    n: int

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "user": self.user,
            "client": self.client,
            "stream": self.stream,
            "transport": self.transport,
            "first": self.first,
            "last": self.last,
            "n": self.n,
        }


# --- classifying what a client printed --------------------------------------------------


def output_kind(obj: Any) -> str | None:
    """The kind of a client's output record, or None if it is not a well-formed one.

    The one test both the recorder and the reader apply, so a record is
    judged the same way live and offline.
    """
    if not isinstance(obj, dict):
        return None
    if "seen" in obj:
        event = obj["seen"]
        ok = (
            isinstance(event, dict)
            and _is_id(event.get("id"))
            and isinstance(event.get("flow"), str)
            and isinstance(event.get("type"), str)
        )
        return "seen" if ok else None
    if "view" in obj:
        return "view" if _is_id(obj["view"]) else None
    if "acked" in obj:
        return "acked" if isinstance(obj["acked"], str) and _is_id(obj.get("id")) else None
    if "gave_up" in obj:
        return "gave_up" if isinstance(obj["gave_up"], str) else None
    if obj.get("stopped") is True:
        return "stopped"
    return None


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_printed(line: str | bytes, t: float) -> Printed | Bad:
    """Sort one line of a client's stdout into an output record or a bad line."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Bad(t, text)
    kind = output_kind(obj)
    return Bad(t, text) if kind is None else Printed(t, kind, obj)


# --- writers ----------------------------------------------------------------------------


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def write_run_info(run_dir: str | os.PathLike, info: RunInfo) -> Path:
    """Write run.json whole (through a temporary file, so a reader never sees half of it)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(info.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, path)
    return path


def write_history(run_dir: str | os.PathLike, events: Iterable[dict[str, Any]]) -> Path:
    """Write history.jsonl: the stored events, sorted by id (the server's order)."""
    return write_records(Path(run_dir) / HISTORY_FILE, sorted(events, key=lambda e: e["id"]))


def write_records(path: str | os.PathLike, records: Iterable[Any]) -> Path:
    """Write a whole .jsonl file at once (records with `to_json`, or dicts), replacing it.

    For records gathered after the fact (the server's delivery record, a
    test's synthetic run); `RecordWriter` is for records as they happen.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.writelines(_dumps(r.to_json() if hasattr(r, "to_json") else r) + b"\n" for r in records)
    return path


class RecordWriter:
    """Appends records (objects with `to_json`, or plain dicts) to a .jsonl file, a line each.

    Each write is flushed, so a run that dies leaves every record written so
    far. Use as a context manager, or call `close`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(self.path, "ab")  # closed by close()

    def write(self, record: Any) -> None:
        obj = record.to_json() if hasattr(record, "to_json") else record
        self._file.write(_dumps(obj) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_log_path(run_dir: str | os.PathLike, lab_id: str) -> Path:
    """clients/<lab_id>.jsonl; a lab_id must be a plain file name."""
    if not lab_id or "/" in lab_id or "\\" in lab_id or lab_id in (".", ".."):
        raise ValueError(f"lab_id {lab_id!r} cannot name a file: use letters, digits, - and _")
    return Path(run_dir) / CLIENTS_DIR / f"{lab_id}.jsonl"


class ClientRecorder(RecordWriter):
    """One client's file, written as the run goes. `t` defaults to now (time.time())."""

    def __init__(self, run_dir: str | os.PathLike, lab_id: str) -> None:
        super().__init__(client_log_path(run_dir, lab_id))
        self.lab_id = lab_id

    def sent(self, cmd: dict[str, Any], t: float | None = None) -> Sent:
        """Record a command written to the client's stdin."""
        entry = Sent(time.time() if t is None else t, cmd)
        self.write(entry)
        return entry

    def printed(self, line: str | bytes, t: float | None = None) -> Printed | Bad:
        """Record one line of the client's stdout, as `out` or, if malformed, `bad`."""
        entry = parse_printed(line, time.time() if t is None else t)
        self.write(entry)
        return entry

    def exited(self, code: int | None, t: float | None = None) -> Exited:
        """Record that the client's process ended (code None: killed, or unknown)."""
        entry = Exited(time.time() if t is None else t, code)
        self.write(entry)
        return entry


# --- the reader -------------------------------------------------------------------------


@dataclass(slots=True)
class ClientLog:
    """One client's file, parsed: its entries in file order."""

    lab_id: str
    entries: list[ClientEntry] = field(default_factory=list)

    @property
    def bad(self) -> list[Bad]:
        return [e for e in self.entries if isinstance(e, Bad)]


@dataclass(slots=True)
class Run:
    """A run directory, read back. `problems` lists damage the reader tolerated."""

    path: Path
    info: RunInfo
    history: list[dict[str, Any]]
    clients: dict[str, ClientLog]
    connections: list[ConnectionEvent]
    windows: list[FaultWindow]
    actions: list[FaultAction]
    deliveries: list[Delivery] | None  # None: no delivery record was collected
    problems: list[str] = field(default_factory=list)

    def rel(self, t: float) -> float:
        """Seconds since the run started."""
        return t - self.info.started


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run directory. NotARun if it has no valid run.json or no history.jsonl."""
    path = Path(run_dir)
    if not path.is_dir():
        raise NotARun(f"{path} is not a directory")
    info_path = path / RUN_FILE
    if not info_path.is_file():
        raise NotARun(
            f"{path} has no {RUN_FILE}, so it is not a run directory "
            "(one that `rt chaos run --out DIR` wrote)"
        )
    try:
        info = RunInfo.from_json(orjson.loads(info_path.read_bytes()))
    except (orjson.JSONDecodeError, ValueError) as e:
        raise NotARun(f"{info_path} is not a valid run record: {e}") from None
    history_path = path / HISTORY_FILE
    if not history_path.is_file():
        raise NotARun(
            f"{path} has no {HISTORY_FILE}: the run ended before the lab "
            "fetched the server's log, so there is nothing to check against"
        )

    problems: list[str] = []
    history = _read_file(history_path, _history_event, problems)
    history.sort(key=lambda e: e["id"])
    clients = {}
    for spec in info.clients:
        try:
            log_path = client_log_path(path, spec.lab_id)
        except ValueError as e:
            problems.append(str(e))
            clients[spec.lab_id] = ClientLog(spec.lab_id)
            continue
        if not log_path.is_file():
            problems.append(
                f"{CLIENTS_DIR}/{spec.lab_id}.jsonl is missing: "
                "the lab recorded nothing for that client"
            )
            clients[spec.lab_id] = ClientLog(spec.lab_id)
            continue
        clients[spec.lab_id] = ClientLog(spec.lab_id, _read_client(log_path))

    connections = _read_optional(path / CONNECTIONS_FILE, _connection, problems)
    fault_lines = _read_optional(path / FAULTS_FILE, _fault_line, problems)
    windows = [x for x in fault_lines if isinstance(x, FaultWindow)]
    actions = [x for x in fault_lines if isinstance(x, FaultAction)]
    deliveries_path = path / DELIVERIES_FILE
    deliveries = (
        _read_file(deliveries_path, _delivery, problems) if deliveries_path.is_file() else None
    )
    if deliveries is None:
        problems.append(
            f"no {DELIVERIES_FILE}: the server's delivery record was not "
            "collected, so 'one live stream' could not be checked"
        )
    return Run(path, info, history, clients, connections, windows, actions, deliveries, problems)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    # One read and split: much faster than iterating the file for 10^5 short lines.
    for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if line.strip():
            yield number, line


def _read_file(path: Path, parse, problems: list[str]) -> list:
    """Parse each line with `parse` (object -> record, raising on a bad one); note the rest."""
    records, damaged = [], []
    for number, line in _lines(path):
        try:
            records.append(parse(orjson.loads(line)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            damaged.append(number)
    if damaged:
        quoted = ", ".join(str(n) for n in damaged[:_QUOTED_PROBLEMS])
        more = "..." if len(damaged) > _QUOTED_PROBLEMS else ""
        problems.append(
            f"{path.name}: skipped {len(damaged)} malformed line(s) (line "
            f"{quoted}{more}); the program that wrote it wrote a bad record"
        )
    return records


def _read_optional(path: Path, parse, problems: list[str]) -> list:
    return _read_file(path, parse, problems) if path.is_file() else []


def _read_client(path: Path) -> list[ClientEntry]:
    """A client's file. Damaged lines become Bad entries (at the last good time)."""
    entries: list[ClientEntry] = []
    append, loads = entries.append, orjson.loads
    last_t = 0.0
    for _, line in _lines(path):
        try:
            obj = loads(line)
            t = obj["t"]
            if type(t) is not float:  # the fast path: JSON gives finite floats only
                t = _time(t, "t")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            append(Bad(last_t, line.decode("utf-8", "replace").rstrip("\r\n")))
            continue
        last_t = t
        out = obj.get("out")
        if out is not None:
            # `seen` is most of a log: test it inline before the general output_kind
            event = out.get("seen") if type(out) is dict else None
            if (
                type(event) is dict
                and type(event.get("id")) is int
                and type(event.get("flow")) is str
                and type(event.get("type")) is str
            ):
                append(Printed(t, "seen", out))
                continue
            kind = output_kind(out)
            append(Printed(t, kind, out) if kind else Bad(t, orjson.dumps(out).decode()))
        elif "in" in obj and isinstance(obj["in"], dict):
            append(Sent(t, obj["in"]))
        elif "exit" in obj:
            code = obj["exit"]
            append(Exited(t, code if _is_id(code) else None))
        elif "bad" in obj:
            append(Bad(t, str(obj["bad"])))
        else:
            append(Bad(t, line.decode("utf-8", "replace").rstrip("\r\n")))
    return entries


def _history_event(obj: Any) -> dict[str, Any]:
    if not (
        isinstance(obj, dict)
        and _is_id(obj.get("id"))
        and isinstance(obj.get("flow"), str)
        and isinstance(obj.get("type"), str)
    ):
        raise ValueError("not a stored event")
    return obj


def _connection(obj: Any) -> ConnectionEvent:
    if obj["event"] not in ("open", "close"):
        raise ValueError("event must be open or close")
    return ConnectionEvent(
        _time(obj["t"], "t"), obj["conn"], _str(obj["label"], "label"), obj["event"]
    )


def _fault_line(obj: Any) -> FaultWindow | FaultAction:
    # An action line may name its window by id ("window": 3): only an object is a window.
    w = obj.get("window")
    if isinstance(w, dict):
        name = w.get("name", w.get("fault"))  # the proxy's own window records say "fault"
        return FaultWindow(
            _str(name, "name"),
            _time(w["start"], "start"),
            _time(w["end"], "end"),
            dict(w.get("params") or {}),
        )
    return FaultAction(
        _time(obj["t"], "t"),
        _str(obj["fault"], "fault"),
        _str(obj["action"], "action"),
        tuple(obj.get("conns") or ()),
    )


def _delivery(obj: Any) -> Delivery:
    first, last, n = obj["first"], obj["last"], obj.get("n", 0)
    if not (_is_id(first) and _is_id(last) and _is_id(n)):
        raise ValueError("first, last and n must be integers")
    return Delivery(
        _time(obj["t"], "t"),
        str(obj["user"]),
        str(obj["client"]),
        str(obj["stream"]),
        str(obj.get("transport", "")),
        first,
        last,
        n,
    )
