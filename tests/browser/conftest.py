"""Fixtures of the browser tests: a real `rt serve`, a TCP proxy in front of it, Chromium.

The browser only ever talks to the proxy, so a test can cut the network
(`proxy.cut()` / `proxy.restore()`) or kill and restart the server on the
same port (`server.kill()` / `server.start()`) while the pages run.

Chromium (Debian's, /usr/bin/chromium) and Playwright are optional: without
them these tests skip, unless RT_REQUIRE_BROWSER=1, when they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser.proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("RT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_ARGS = [
    "--guests",
    "--flow",
    "general",
    "--flow",
    "random",
    "--ops-rate",
    "1000",
    "--ops-burst",
    "1000",
    "--heartbeat",
    "2",
    "--presence-grace",
    "2",
    "--poll-timeout",
    "3",
    # every test signs two guests up from 127.0.0.1: lift the 10 a minute
    "--guest-rate",
    "100000",
]


def _unavailable(why: str) -> None:
    if os.environ.get("RT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests required (RT_REQUIRE_BROWSER=1) but {why}")
    pytest.skip(why)


class RtServer:
    """`python -m rt serve` as a subprocess that can be killed and started again on its port.

    Output goes to files (the access log would fill a pipe nobody reads).
    """

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.db = workdir / "rt.db"
        self.args = list(args)
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 20) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        out = self.workdir / f"server-{self.starts}.out"
        err = self.workdir / f"server-{self.starts}.err"
        cmd = [
            sys.executable,
            "-m",
            "rt",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            str(self.db),
            *self.args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=stderr, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(r"rt serving on (http://\S+)", out.read_text()):
                self.url = m[1]
                self.port = int(self.url.rsplit(":", 1)[1])
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"rt serve exited early: {err.read_text()[-2000:]}")
            time.sleep(0.02)  # polling a file for the startup line, not synchronising a test
        else:
            self.kill()
            raise RuntimeError("rt serve did not print its URL in time")
        with httpx.Client(timeout=5) as http:
            while True:
                try:
                    if http.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("rt serve did not answer /health in time")
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye; the database is left as a crash leaves it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """One headless Chromium for the whole session (each test makes its own contexts)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright (python) is not installed")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(
        CHROMIUM
    ):
        _unavailable(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30000)
        except Exception as exc:  # noqa: BLE001 - any launch failure means "no usable browser"
            _unavailable(f"Chromium does not start: {exc}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtServer]:
    """One rt server per test module (tests keep apart by user names)."""
    s = RtServer(tmp_path_factory.mktemp("rt-server"), *SERVER_ARGS)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def proxy(server: RtServer) -> Iterator[TcpProxy]:
    with TcpProxy(server.port) as p:
        yield p


@pytest.fixture
def net(proxy: TcpProxy, server: RtServer) -> Iterator[TcpProxy]:
    """The proxy, restored after the test whatever happened; the server running again."""
    yield proxy
    proxy.restore()
    if server.proc is None or server.proc.poll() is not None:
        server.start()


SAVED: list[Path] = []


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: under pytest's temporary base, never in the repository."""
    path = tmp_path_factory.getbasetemp() / "browser-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def saved(path: Path) -> Path:
    """Note a file a test wrote, to list it at the end of the run."""
    print(f"saved {path}")
    SAVED.append(path)
    return path


def pytest_terminal_summary(terminalreporter) -> None:
    if SAVED:
        terminalreporter.write_sep("-", "browser test artifacts")
        for path in SAVED:
            terminalreporter.write_line(str(path))
