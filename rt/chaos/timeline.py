"""timeline.png: one picture of a run, drawn with Pillow from a `CheckResult`.

Time runs left to right in seconds since the run started, the same axis in
every panel. From the top:

- the title (PASS or FAIL, seed, size of the run) and the reproducing command;
- the fault schedule: one row per fault, each window a coloured bar, and the
  same colour as a faint band behind every panel below, so one can see what
  each client went through during each fault;
- "last seen id": the history head over time (black step line, from each
  event's `sent`) and each client's position (the cursor of its view, then
  each id it showed); with more than `MANY` clients, the minimum, median and
  maximum position over all clients instead of one line each;
- "clients connected": how many clients had at least one proxy connection open;
- one lane per client (with more than `MANY` clients, a sample: the
  violating clients first, then evenly spaced), green where it had a
  connection open, grey where it had none, its position as a line rising to
  the head of its own flows, a purple tick at each reset (a new view), a red
  cross at each reported violation, and its violated invariants on the right.

Vertical lines mark when the faults stopped (orange, dashed), the catch-up
deadline (grey, dotted) and when stop was sent (dark red). Everything is
drawn at twice the size and scaled down, for smooth lines and text.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from rt.chaos.check import INVARIANTS, VIOLATED, CheckResult

MANY = 40  # more clients than this: aggregate panels and a sample of lanes
SAMPLE_LANES = 24

_SCALE = 2  # drawn at this multiple, then scaled down (Pillow draws no anti-aliased lines)
WIDTH = 1600
LEFT, RIGHT = 170, 190  # label columns either side of the plot

_INK = (33, 37, 41)
_MUTED = (108, 117, 125)
_GRID = (226, 230, 234)
_PASS = (30, 130, 60)
_CONNECTED = (178, 226, 184)
_CONNECTED_LINE = (0, 120, 60)
_DISCONNECTED = (214, 214, 214)
_POSITION = (31, 96, 170)
_SLOWEST = (217, 95, 2)
_HEAD = (190, 190, 190)
_RESET = (128, 60, 170)
_VIOLATION = (214, 39, 40)
_FAULTS_STOPPED = (230, 126, 34)
_STOP_SENT = (140, 20, 30)
_DEADLINE = (120, 120, 120)
# Fault colours (Okabe-Ito, legible to colour-blind readers), by fault name in order.
_FAULT_COLOURS = [
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (153, 153, 153),
]
# Client lines when there are few (tab10).
_CLIENT_COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


class _Canvas:
    """Pillow drawing in logical pixels (scaled by _SCALE), with translucent rectangles."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.image = Image.new("RGB", (width * _SCALE, height * _SCALE), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.overlay = Image.new("RGBA", self.image.size, (0, 0, 0, 0))
        self.overlay_draw = ImageDraw.Draw(self.overlay)
        self._fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}

    def font(self, size: int):
        if size not in self._fonts:
            self._fonts[size] = ImageFont.load_default(size=size * _SCALE)
        return self._fonts[size]

    @staticmethod
    def _s(*xy: float) -> list[float]:
        return [v * _SCALE for v in xy]

    def rect(self, x0, y0, x1, y1, fill=None, outline=None, width=1) -> None:
        if x1 <= x0 or y1 <= y0:
            return
        self.draw.rectangle(
            self._s(x0, y0, x1, y1), fill=fill, outline=outline, width=width * _SCALE
        )

    def band(self, x0, y0, x1, y1, rgb, alpha: int) -> None:
        """A translucent rectangle, composited over everything at the end."""
        if x1 > x0:
            self.overlay_draw.rectangle(self._s(x0, y0, x1, y1), fill=(*rgb, alpha))

    def line(self, points, fill, width: float = 1) -> None:
        if len(points) >= 2:
            self.draw.line(
                [(x * _SCALE, y * _SCALE) for x, y in points],
                fill=fill,
                width=max(1, round(width * _SCALE)),
                joint="curve",
            )

    def dashed(self, x, y0, y1, fill, dash=6, gap=4, width=1.5) -> None:
        y = y0
        while y < y1:
            self.line([(x, y), (x, min(y + dash, y1))], fill, width)
            y += dash + gap

    def text(self, x, y, text, size=13, fill=_INK, anchor="la") -> None:
        self.draw.text(
            (x * _SCALE, y * _SCALE), text, font=self.font(size), fill=fill, anchor=anchor
        )

    def text_width(self, text, size=13) -> float:
        return self.draw.textlength(text, font=self.font(size)) / _SCALE

    def cross(self, x, y, r, fill) -> None:
        self.line([(x - r, y - r), (x + r, y + r)], fill, 2)
        self.line([(x - r, y + r), (x + r, y - r)], fill, 2)

    def save(self, path: Path) -> None:
        image = Image.alpha_composite(self.image.convert("RGBA"), self.overlay).convert("RGB")
        image = image.resize((self.width, self.height), Image.Resampling.LANCZOS)
        image.save(path, "PNG")


# --- the series ---------------------------------------------------------------------------


def _positions(result: CheckResult) -> dict[str, list[tuple[float, int]]]:
    """Per client, its position over time: (t, cursor) at each view, (t, id) at each shown."""
    out = {}
    for lab_id, a in result.activity.items():
        steps = []
        for view in a.views:
            steps.append((view.t, view.cursor))
            steps += [(t, e["id"]) for t, e in view.shown]
        steps.sort(key=lambda s: s[0])
        out[lab_id] = steps
    return out


def _connected(result: CheckResult, end: float) -> dict[str, list[tuple[float, float]]]:
    """Per label, the intervals in which it had at least one proxy connection open."""
    events = sorted(result.run.connections, key=lambda c: c.t)
    open_now: dict[str, set] = defaultdict(set)
    since: dict[str, float] = {}
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for c in events:
        conns = open_now[c.label]
        if c.event == "open":
            if not conns:
                since[c.label] = c.t
            conns.add(c.conn)
        elif c.conn in conns:
            conns.discard(c.conn)
            if not conns:
                out[c.label].append((since.pop(c.label), c.t))
    for label, t in since.items():  # still open when the record ends
        out[label].append((t, end))
    return out


def _head(result: CheckResult) -> list[tuple[float, int]]:
    """The history head over time, from each stored event's `sent` (ms)."""
    steps, head = [], None
    for e in result.run.history:
        sent = e.get("sent")
        if isinstance(sent, int | float) and (head is None or e["id"] > head):
            head = e["id"]
            steps.append((sent / 1000, head))
    steps.sort(key=lambda s: s[0])
    return steps


def _nice_step(span: float, target: int) -> float:
    """A 1, 2 or 5 times a power of ten that cuts `span` into about `target` pieces."""
    if span <= 0:
        return 1.0
    raw = span / target
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def lane_sample(result: CheckResult) -> list[str]:
    """The lanes to draw: every client if few, else violating ones first, then spread out."""
    ids = list(result.activity)
    if len(ids) <= MANY:
        return ids
    violating = [
        c
        for c in ids
        if any(
            result.verdicts[n].get(c) is not None and result.verdicts[n][c].status == VIOLATED
            for n in INVARIANTS
        )
    ]
    chosen = violating[: SAMPLE_LANES // 2]
    rest = [c for c in ids if c not in set(chosen)]
    room = SAMPLE_LANES - len(chosen)
    step = len(rest) / room
    chosen += [rest[int(i * step)] for i in range(room)]
    order = {c: i for i, c in enumerate(ids)}
    return sorted(chosen, key=order.__getitem__)


# --- the picture --------------------------------------------------------------------------


def draw_timeline(result: CheckResult, path: str | os.PathLike) -> Path:
    """Draw the run's timeline into `path` (a PNG); returns the path."""
    run, info = result.run, result.run.info
    path = Path(path)
    positions = _positions(result)
    t0 = info.started
    t1 = max(_record_end(result, positions), t0 + 1)
    connected = _connected(result, t1)
    flow_heads = {e["flow"]: e["id"] for e in run.history}  # history is in id order
    base = run.history[0]["id"] - 1 if run.history else 0
    top_id = max(result.history_head or 0, base + 1)
    many = len(result.activity) > MANY
    lanes = lane_sample(result)
    lane_h = 34 if len(lanes) <= 12 else 22
    windows = sorted(run.windows, key=lambda w: w.start)
    fault_names = list(dict.fromkeys(w.name for w in windows))
    colour = {n: _FAULT_COLOURS[i % len(_FAULT_COLOURS)] for i, n in enumerate(fault_names)}
    client_colour = {
        c: _CLIENT_COLOURS[i % len(_CLIENT_COLOURS)] for i, c in enumerate(result.activity)
    }
    violated = {
        c: [
            INVARIANTS[n]
            for n in INVARIANTS
            if result.verdicts[n].get(c) is not None and result.verdicts[n][c].status == VIOLATED
        ]
        for c in result.activity
    }

    # The vertical layout, top to bottom (logical pixels).
    title_y = 14
    markers_y = title_y + 76
    faults_y = markers_y + 20
    fault_row = 18
    pos_y = faults_y + max(1, len(fault_names)) * fault_row + 40
    pos_h = 240
    conn_y = pos_y + pos_h + 52
    conn_h = 80
    lanes_y = conn_y + conn_h + 56
    axis_y = lanes_y + len(lanes) * lane_h
    legend_y = axis_y + 46
    height = legend_y + 2 * 18 + 14
    x0, x1 = LEFT, WIDTH - RIGHT
    c = _Canvas(WIDTH, height)

    def x(t: float) -> float:
        return x0 + (t - t0) / (t1 - t0) * (x1 - x0)

    _title(c, result, t1 - t0, title_y)
    ticks = _ticks(t1 - t0)

    # The fault schedule: a row per fault, and a faint band behind everything below.
    _grid(c, x, ticks, t0, faults_y, faults_y + max(1, len(fault_names)) * fault_row)
    if not fault_names:
        c.text(
            x0 + 4, faults_y + fault_row / 2, "no fault windows recorded", 12, _MUTED, anchor="lm"
        )
    for row, name in enumerate(fault_names):
        ry = faults_y + row * fault_row
        c.text(LEFT - 10, ry + fault_row / 2, name, 12, _INK, anchor="rm")
        for w in windows:
            if w.name != name:
                continue
            wx0, wx1 = x(w.start), max(x(w.end), x(w.start) + 2)
            c.rect(wx0, ry + 2, wx1, ry + fault_row - 2, fill=colour[name])
            label = ", ".join(f"{k}={v}" for k, v in w.params.items())
            if label and c.text_width(label, 10) < wx1 - wx0 - 6:
                c.text(wx0 + 3, ry + fault_row / 2, label, 10, _INK, anchor="lm")
            c.band(wx0, pos_y, wx1, axis_y, colour[name], 40)

    # Panel: last seen id, against the history head.
    def py(v: float) -> float:
        v = min(max(v, base), top_id)
        return pos_y + pos_h - (v - base) / (top_id - base) * pos_h

    if many:
        what = (
            f"over all {len(result.activity)} clients: median (bold), slowest client "
            "(orange), fastest (thin), against the history head (grey)"
        )
    else:
        what = "one line per client (colours as in the lanes), against the history head (grey)"
    _panel_title(c, x0, pos_y, "last seen id", what)
    _grid(c, x, ticks, t0, pos_y, pos_y + pos_h)
    ystep = max(1, _nice_step(top_id - base, 5))  # ids are whole numbers
    v = math.ceil(base / ystep) * ystep
    while v <= top_id:
        c.line([(x0, py(v)), (x1, py(v))], _GRID, 1)
        c.text(x0 - 6, py(v), f"{v:g}", 11, _MUTED, anchor="rm")
        v += ystep
    _draw_steps(c, x, py, _head(result), t1, _HEAD, 5)
    if many:
        _draw_aggregate(c, x, py, positions, t0, t1, x0, x1)
    else:
        for lab_id in result.activity:
            _draw_steps(c, x, py, positions[lab_id], t1, client_colour[lab_id], 1.8)
    c.rect(x0, pos_y, x1, pos_y + pos_h, outline=_MUTED)
    _axis(c, x, ticks, t0, pos_y + pos_h)

    # Panel: how many clients had a connection open.
    n = max(1, len(result.activity))

    def cy(v: float) -> float:
        return conn_y + conn_h - v / n * conn_h

    _panel_title(
        c,
        x0,
        conn_y,
        "clients connected",
        "with at least one connection open through the fault proxy",
    )
    _grid(c, x, ticks, t0, conn_y, conn_y + conn_h)
    for v in sorted({0, n // 2, n}):
        c.line([(x0, cy(v)), (x1, cy(v))], _GRID, 1)
        c.text(x0 - 6, cy(v), str(v), 11, _MUTED, anchor="rm")
    edges = sorted(
        [(a, 1) for spans in connected.values() for a, _ in spans]
        + [(b, -1) for spans in connected.values() for _, b in spans]
    )
    count, steps = 0, [(t0, 0)]
    for t, d in edges:
        count += d
        steps.append((t, count))
    _draw_steps(c, x, cy, steps, t1, _CONNECTED_LINE, 2)
    c.rect(x0, conn_y, x1, conn_y + conn_h, outline=_MUTED)
    _axis(c, x, ticks, t0, conn_y + conn_h)

    # Lanes: one client each.
    _panel_title(
        c,
        x0,
        lanes_y - 4,
        "clients",
        f"{len(lanes)} of {len(result.activity)}: every violating one first, then evenly spaced"
        if many
        else "connection, last seen id rising to the head of its flows, resets, violations",
    )
    marks = defaultdict(list)
    for violations in result.first.values():
        for v in violations:
            for owner in v.client.split(", "):
                marks[owner].append(v.t)
    for row, lab_id in enumerate(lanes):
        ly = lanes_y + row * lane_h
        a = result.activity[lab_id]
        c.rect(x0, ly + 2, x1, ly + lane_h - 2, fill=_DISCONNECTED)
        for a0, a1 in connected.get(lab_id, ()):
            c.rect(x(a0), ly + 2, max(x(a1), x(a0) + 1), ly + lane_h - 2, fill=_CONNECTED)
        label = f"{lab_id}  {a.spec.transport}"
        c.text(LEFT - 10, ly + lane_h / 2, label, 12, _INK, anchor="rm")
        if not many:
            sx = LEFT - 10 - c.text_width(label, 12) - 16
            c.rect(
                sx, ly + lane_h / 2 - 5, sx + 10, ly + lane_h / 2 + 5, fill=client_colour[lab_id]
            )
        lane_head = max((flow_heads.get(f, base) for f in a.flows), default=base)
        lane_head = lane_head if lane_head > base else top_id

        def ly_of(v: float, ly=ly, lane_head=lane_head) -> float:
            v = min(max(v, base), lane_head)
            return ly + lane_h - 5 - (v - base) / (lane_head - base) * (lane_h - 10)

        _draw_steps(c, x, ly_of, positions[lab_id], t1, _POSITION, 2)
        for view in a.views[1:]:
            c.line([(x(view.t), ly + 1), (x(view.t), ly + lane_h - 1)], _RESET, 2.5)
        for t in marks.get(lab_id, ()):
            c.cross(min(x(t), x1 - 6), ly + lane_h / 2, 4.5, _VIOLATION)
        text = ", ".join(violated[lab_id]) or "ok"
        while c.text_width(text, 11) > RIGHT - 16 and len(text) > 4:
            text = text[:-2] + "…"
        c.text(
            x1 + 8,
            ly + lane_h / 2,
            text,
            11,
            _VIOLATION if violated[lab_id] else _MUTED,
            anchor="lm",
        )

    off_chart = _markers(c, x, info, t0, t1, markers_y, axis_y)
    _axis(c, x, ticks, t0, axis_y, label=True)
    if off_chart:
        c.text(
            x1, axis_y + 22, "; ".join(off_chart) + ", right of the chart", 11, _MUTED, anchor="ra"
        )
    _legend(c, legend_y, fault_names, colour, many)
    path.parent.mkdir(parents=True, exist_ok=True)
    c.save(path)
    return path


def _record_end(result: CheckResult, positions) -> float:
    """The last time anything in the records happened (the right end of the time axis)."""
    info = result.run.info
    return max(
        [info.started, info.ended or 0, info.stopped or 0, info.faults_stopped or 0]
        + [s[-1][0] for s in positions.values() if s]
        + [c.t for c in result.run.connections[-1:]]
    )


def _ticks(span: float) -> list[float]:
    step = _nice_step(span, 12)
    return [i * step for i in range(int(span / step + 1e-9) + 1)]


def _title(c: _Canvas, result: CheckResult, span: float, y: float) -> None:
    info = result.run.info
    verdict = "PASS" if result.ok else "FAIL"
    head = f"rt chaos run: {verdict}"
    c.text(LEFT, y, head, 22, fill=_PASS if result.ok else _VIOLATION)
    c.text(
        LEFT + c.text_width(head, 22) + 16,
        y + 7,
        f"{'no seed' if info.seed is None else f'seed {info.seed}'}    "
        f"{len(result.activity)} clients    "
        f"{len(result.run.history)} events    {span:.1f} s",
        14,
        fill=_MUTED,
    )
    command = info.command or "(no command recorded)"
    limit = WIDTH - LEFT - 20
    if c.text_width(command, 12) > limit:
        while c.text_width(command + "…", 12) > limit:
            command = command[:-1]
        command += "…"
    c.text(LEFT, y + 33, command, 12, fill=_MUTED)
    failed = [
        f"{INVARIANTS[n]} ({result.violation_totals[n]})"
        for n in INVARIANTS
        if result.violation_totals[n]
    ]
    summary = ("violated: " + ", ".join(failed)) if failed else "every invariant held"
    c.text(LEFT, y + 51, summary, 12, fill=_VIOLATION if failed else _PASS)


def _panel_title(c: _Canvas, x0: float, top: float, title: str, what: str) -> None:
    c.text(x0, top - 8, title, 14, _INK, anchor="ls")
    c.text(x0 + c.text_width(title, 14) + 10, top - 8, what, 11, _MUTED, anchor="ls")


def _grid(c: _Canvas, x, ticks, t0, y0, y1) -> None:
    """Vertical lines at the time ticks, behind what is drawn next."""
    for s in ticks:
        c.line([(x(t0 + s), y0), (x(t0 + s), y1)], _GRID, 1)


def _markers(c: _Canvas, x, info, t0, t1, y, bottom) -> list[str]:
    """When the faults stopped, the catch-up deadline and stop: lines, labelled on one row.

    Returns a note for each marker that falls right of the chart (the caller prints them).
    """
    markers: list[tuple[float | None, str, tuple[int, int, int], tuple[int, int] | None]] = [
        (info.faults_stopped, "faults stopped", _FAULTS_STOPPED, (6, 4))
    ]
    if info.faults_stopped is not None:
        markers.append(
            (
                info.faults_stopped + info.catch_up_limit,
                f"catch-up deadline (+{info.catch_up_limit:g} s)",
                _DEADLINE,
                (2, 4),
            )
        )
    markers.append((info.stopped, "stop sent", _STOP_SENT, None))
    placed: list[tuple[float, float]] = []
    off_chart = []
    for t, label, ink, dash in markers:
        if t is None:
            continue
        if not t0 <= t <= t1:
            off_chart.append(f"{label} at +{t - t0:.1f} s")
            continue
        mx = x(t)
        if dash is None:
            c.line([(mx, y + 14), (mx, bottom)], ink, 1.5)
        else:
            c.dashed(mx, y + 14, bottom, ink, dash=dash[0], gap=dash[1])
        w = c.text_width(label, 11)
        lx = min(max(mx - w / 2, LEFT), WIDTH - RIGHT - w)
        if any(lx < b + 6 and lx + w > a - 6 for a, b in placed):
            lx = mx + 4  # would overlap the label before: put it right of its line
        placed.append((lx, lx + w))
        c.text(lx, y, label, 11, ink)
    return off_chart


def _draw_steps(c: _Canvas, x, y, steps, end: float, fill, width: float) -> None:
    """A step line through (t, v) points, held to `end`, thinned to one point per pixel column."""
    if not steps:
        return
    points: list[tuple[float, float]] = []
    last_col = None
    for t, v in steps:
        px, vy = x(t), y(v)
        col = round(px)
        if points and col == last_col:
            points[-1] = (px, vy)  # a later value in the same pixel column wins
            continue
        if points:
            points.append((px, points[-1][1]))
        points.append((px, vy))
        last_col = col
    points.append((x(end), points[-1][1]))
    c.line(points, fill, width)


def _draw_aggregate(c: _Canvas, x, y, positions, t0, t1, x0, x1) -> None:
    """Min, median and max position over the clients that had a view, every 3 pixels.

    One forward sweep per client over the sample times (both sorted), not a
    search per client per sample: 200 clients cost a few hundred thousand steps.
    """
    columns = max(1, int(x1 - x0) // 3)
    times = [t0 + (t1 - t0) * i / columns for i in range(columns + 1)]
    samples: list[list[int]] = [[] for _ in times]
    for steps in positions.values():
        i, value = 0, None
        for column, t in enumerate(times):
            while i < len(steps) and steps[i][0] <= t:
                value = steps[i][1]
                i += 1
            if value is not None:
                samples[column].append(value)
    lows, mids, highs = [], [], []
    for t, values in zip(times, samples, strict=True):
        if values:
            values.sort()
            px = x(t)
            lows.append((px, y(values[0])))
            mids.append((px, y(values[len(values) // 2])))
            highs.append((px, y(values[-1])))
    if not mids:
        return
    c.overlay_draw.polygon(
        [(px * _SCALE, py * _SCALE) for px, py in highs + lows[::-1]], fill=(*_POSITION, 28)
    )
    c.line(highs, _POSITION, 1)
    c.line(lows, _SLOWEST, 1.8)
    c.line(mids, _POSITION, 2.5)


def _axis(c: _Canvas, x, ticks, t0, y0, label: bool = False) -> None:
    for s in ticks:
        c.line([(x(t0 + s), y0), (x(t0 + s), y0 + 4)], _MUTED, 1)
        c.text(x(t0 + s), y0 + 6, f"{s:g}", 11, _MUTED, anchor="ma")
    if label:
        c.text(
            (LEFT + WIDTH - RIGHT) / 2,
            y0 + 22,
            "seconds since the run started",
            12,
            _INK,
            anchor="ma",
        )


def _legend(c: _Canvas, y: float, fault_names, colour, many: bool) -> None:
    items = [
        ("rect", _CONNECTED, "connected"),
        ("rect", _DISCONNECTED, "no connection"),
        ("line", _POSITION, "last seen id (lanes)"),
        ("wide", _HEAD, "history head"),
    ]
    if many:
        items += [("line", _POSITION, "median"), ("line", _SLOWEST, "slowest client")]
    items += [
        ("tick", _RESET, "reset (a new view)"),
        ("cross", _VIOLATION, "violation"),
        ("line", _FAULTS_STOPPED, "faults stopped"),
        ("line", _STOP_SENT, "stop sent"),
    ]
    items += [("rect", colour[n], f"fault: {n}") for n in fault_names]
    px: float = LEFT
    row_y = y
    for kind, ink, text in items:
        w = 22 + c.text_width(text, 11) + 18
        if px + w > WIDTH - 20:
            px, row_y = LEFT, row_y + 18
        if kind == "rect":
            c.rect(px, row_y + 2, px + 16, row_y + 12, fill=ink, outline=_MUTED)
        elif kind in ("line", "wide"):
            c.line([(px, row_y + 7), (px + 16, row_y + 7)], ink, 5 if kind == "wide" else 2)
        elif kind == "tick":
            c.line([(px + 8, row_y), (px + 8, row_y + 14)], ink, 3)
        else:
            c.cross(px + 8, row_y + 7, 4, ink)
        c.text(px + 22, row_y + 7, text, 11, _INK, anchor="lm")
        px += w
