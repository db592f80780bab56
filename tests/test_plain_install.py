"""Every `rt` subcommand from the README's plain install (`pip install -e .`, no extras).

Issue 9: `rt bench` died with a traceback on that install. The rule, for every
subcommand present or future: its `--help` works, and a smoke run either works
or prints one line naming the install command that adds what it needs and
exits 2. The test walks the command tree, so a new subcommand without a smoke
run here fails it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.process import ROOT, RtProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """The python of a fresh venv holding rt installed as the README's quick start does."""
    home = tmp_path_factory.mktemp("plain-venv")
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def run(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "rt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def command_paths(python: Path) -> list[tuple[str, ...]]:
    """Every leaf command of the `rt` tree, as the plain install sees it."""
    walk = (
        "import json, click\n"
        "from rt.cli import main\n"
        "def leaves(cmd, path):\n"
        "    if isinstance(cmd, click.Group):\n"
        "        for name, sub in cmd.commands.items():\n"
        "            if not sub.hidden:\n"
        "                yield from leaves(sub, path + [name])\n"
        "    else:\n"
        "        yield path\n"
        "print(json.dumps(list(leaves(main, []))))\n"
    )
    out = subprocess.run([str(python), "-c", walk], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [tuple(p) for p in json.loads(out.stdout)]


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]


# -- smoke runs, one per leaf command ------------------------------------------------------


def serves(command: str) -> Callable[[Path, Path], None]:
    def smoke(python: Path, tmp: Path) -> None:
        server = RtProcess(db=tmp / f"{command}.db", command=command, python=str(python))
        try:
            assert httpx.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
            assert server.terminate() < 10
            assert server.proc.returncode == 0
        finally:
            server.kill()

    return smoke


def user_and_flow_commands(python: Path, tmp: Path) -> None:
    db = str(tmp / "cli.db")
    for args in (
        ["user", "add", "ann"],
        ["user", "token", "ann"],
        ["user", "list"],
        ["flow", "add", "talk", "--owner", "ann"],
        ["flow", "list"],
        ["user", "token", "ann", "--revoke"],
    ):
        result = run(python, *args, "--db", db)
        assert result.returncode == 0, (args, result.stderr)
        no_traceback(result)


def needs_extra(extra: str) -> Callable[[Path, Path, tuple[str, ...]], None]:
    """The command needs an extra the plain install lacks: one line, exit 2."""

    def smoke(python: Path, tmp: Path, path: tuple[str, ...]) -> None:
        args = ("--quick", "--out", str(tmp / "out")) if path[0] == "bench" else ("--port", "0")
        result = run(python, *path, *args)
        no_traceback(result)
        assert result.returncode == 2, (path, result.returncode, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert f"pip install -e '.[{extra}]'" in lines[0], lines[0]

    return smoke


def chaos_run(python: Path, tmp: Path) -> None:
    """The race lab from the plain install: a quick run of the built-in Python client."""
    result = run(python, "chaos", "run", "--quick", "--seed", "1", "--out", str(tmp / "lab"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp / "lab" / "timeline.png").read_bytes().startswith(b"\x89PNG")
    again = run(python, "chaos", "check", str(tmp / "lab"))
    assert again.returncode == 0, again.stderr
    missing = run(python, "chaos", "check", str(tmp / "no-such-run"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    no_traceback(missing)


def chaos_proxy(python: Path, tmp: Path) -> None:
    proc = subprocess.Popen(
        [
            str(python),
            "-m",
            "rt",
            "chaos",
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
            "--faults",
            "cut",
            "--seed",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("rt chaos proxy: 127.0.0.1:"), first + proc.stderr.read()
        assert "control http://127.0.0.1:" in first
    finally:
        proc.kill()
        proc.wait(10)


SMOKE: dict[tuple[str, ...], Callable[..., None]] = {
    ("serve",): serves("serve"),
    ("demo",): serves("demo"),
    ("user", "add"): user_and_flow_commands,
    ("user", "token"): user_and_flow_commands,
    ("user", "list"): user_and_flow_commands,
    ("flow", "add"): user_and_flow_commands,
    ("flow", "list"): user_and_flow_commands,
    ("chaos", "run"): chaos_run,
    ("chaos", "check"): chaos_run,
    ("chaos", "proxy"): chaos_proxy,
    ("cluster",): needs_extra("redis"),
    **{
        ("bench", name): needs_extra("bench")
        for name in ("latency", "fanout", "connections", "storm", "ingest", "cluster", "all")
    },
}


def test_every_subcommand_has_help_and_a_smoke_run(plain, tmp_path):
    paths = command_paths(plain)
    assert ("serve",) in paths and ("bench", "latency") in paths  # the walk saw the tree
    missing = [p for p in paths if p not in SMOKE]
    assert not missing, f"add a smoke run for {missing} to SMOKE"
    for path in paths:
        helped = run(plain, *path, "--help")
        assert helped.returncode == 0, (path, helped.stderr)
        no_traceback(helped)
    done: set[Callable[..., None]] = set()
    for path in paths:
        smoke = SMOKE[path]
        if smoke.__code__.co_argcount == 3:
            smoke(plain, tmp_path, path)
        elif smoke not in done:  # one run covers every command it names
            smoke(plain, tmp_path)
            done.add(smoke)


def test_the_browser_lab_says_what_to_install(plain, tmp_path):
    result = run(
        plain, "chaos", "run", "--builtin", "browser", "--quick", "--out", str(tmp_path / "b")
    )
    no_traceback(result)
    assert result.returncode == 2 and "pip install -e '.[browser]'" in result.stderr


def test_the_plain_install_lacks_the_extras(plain):
    # Without this, the bench check above would prove nothing.
    for module in ("matplotlib", "playwright"):
        probe = subprocess.run([str(plain), "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, module


def test_demo_takes_every_setting_as_flag_and_variable(tmp_path):
    """Issue 9: `RT_GUEST_RATE=1000 rt demo` refused the eleventh guest of a minute."""
    server = RtProcess(db=tmp_path / "demo.db", command="demo", env={"RT_GUEST_RATE": "1000"})
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            made = [
                http.post("/auth/guest", json={"name": f"guest{i}"}).status_code for i in range(12)
            ]
            assert made == [201] * 12
            assert [
                f["name"]
                for f in http.get(
                    "/flows",
                    headers={
                        "Authorization": "Bearer "
                        + http.post("/auth/guest", json={"name": "looker"}).json()["token"]
                    },
                ).json()["flows"]
            ] == ["general", "random"]
            assert http.get("/info").json()["limits"]["guest-rate"] == 1000
    finally:
        server.kill()
    flagged = RtProcess(
        "--ops-burst",
        "7",
        "--no-guests",
        "--flow",
        "only",
        db=tmp_path / "demo2.db",
        command="demo",
    )
    try:
        with httpx.Client(base_url=flagged.url, timeout=10) as http:
            info = http.get("/info").json()
            assert info["limits"]["ops-burst"] == 7
            assert http.post("/auth/guest", json={"name": "late"}).status_code == 404
    finally:
        flagged.kill()
    # the defaults that differ from `rt serve`'s are the only ones
    help_text = run(Path(sys.executable), "demo", "--help").stdout
    assert "--guests / --no-guests" in help_text and "--write-timeout" in help_text
