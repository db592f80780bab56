"""`rt bench connections`: server memory per idle connection, WebSocket and SSE.

Load-generator processes (file limit raised with `resource.setrlimit`; the
server gets a high limit through its preexec_fn) open N streams and hold them
idle; the server's RSS (VmRSS) before and after, divided by N, is the cost of
one idle connection (stream, hub subscription, buffers).
"""

from __future__ import annotations

import time
from pathlib import Path

import trio

from rt.bench import common
from rt.bench.common import Report, Server

WORKERS = 4


def holder_worker(port: int, token: str, transport: str, n: int, conn) -> None:
    common.pin_load_generator()
    common.raise_nofile()
    trio.run(_hold, port, token, transport, n, conn)


async def _hold(port, token, transport, n, conn) -> None:
    state = {"ok": 0, "errors": 0}
    limit = trio.Semaphore(100)

    async def one(task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with limit:
                stream = await common.open_stream(port, token, transport, common.query(), 60)
                buf = b""
                while b'"ready"' not in buf:
                    data = await stream.receive()
                    if not data:
                        raise EOFError
                    buf += data
        except Exception:
            state["errors"] += 1
            return
        state["ok"] += 1
        while await stream.receive():
            pass

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
        with trio.move_on_after(240):
            while state["ok"] + state["errors"] < n:
                await trio.sleep(0.05)
        conn.send((state["ok"], state["errors"]))
        await trio.to_thread.run_sync(conn.recv)  # hold until told
        nursery.cancel_scope.cancel()


def measure(transport: str, n: int, progress, task) -> dict:
    ctx = common.spawn_context()
    with Server("sqlite") as server:
        time.sleep(0.5)
        before = server.rss_kb()
        workers = []
        for share in common.split(n, WORKERS):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=holder_worker,
                args=(server.port, server.token, transport, share, child),
                daemon=True,
            )
            p.start()
            workers.append((p, parent))
        ok = errors = 0
        try:
            for _p, parent in workers:
                if not parent.poll(300):
                    raise TimeoutError("holders did not report within 300 s")
                a, b = parent.recv()
                ok += a
                errors += b
                progress.advance(task)
            time.sleep(1.0)  # settle
            after = server.rss_kb()
            hwm = server.hwm_kb()
        finally:
            for _p, parent in workers:
                try:
                    parent.send("stop")
                except OSError:
                    pass
            for p, _ in workers:
                p.join(10)
                if p.is_alive():
                    p.kill()
    return {
        "transport": transport,
        "n": n,
        "connected": ok,
        "errors": errors,
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "peak_rss_mb": hwm / 1024,
        "kb_per_connection": (after - before) / ok if ok else None,
    }


def main(quick: bool, out: Path) -> Report:
    report = Report("connections", out, quick)
    n = 500 if quick else 10_000
    common.raise_nofile()
    with common.deadline_guard(60 if quick else 900), common.progress() as progress:
        task = progress.add_task("connections", total=2 * WORKERS)
        for transport in ("ws", "sse"):
            progress.update(task, description=f"connections: {n} idle {transport}")
            report.rows.append(measure(transport, n, progress, task))
    report.write(
        [
            ("transport", "transport", ""),
            ("n", "N", "d"),
            ("connected", "connected", "d"),
            ("errors", "errors", "d"),
            ("rss_before_mb", "RSS before MB", ".1f"),
            ("rss_after_mb", "RSS after MB", ".1f"),
            ("kb_per_connection", "KB per idle connection", ".1f"),
        ]
    )
    chart(report.rows, report.path(".png"), quick)
    return report


def chart(rows: list[dict], path: Path, quick: bool) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [f"{r['transport']}\n({r['connected']:,} open)" for r in rows]
    values = [r["kb_per_connection"] or 0 for r in rows]
    bars = ax.bar(names, values, color=["#3b75af", "#ef8636"][: len(rows)])
    for b, v in zip(bars, values, strict=False):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f} KB", ha="center", va="bottom")
    ax.axhline(17, color="#c0392b", linestyle="--", label="target: 17 KB (socket.io)")
    ax.set_ylabel("server RSS per idle connection (KB)")
    ax.set_title("Idle connection memory" + (" (--quick: meaningless)" if quick else ""))
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
