"""The `rt` command: users, tokens and flows, also while a server runs on the same file."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
import trio

from tests.process import ROOT, RtProcess

pytestmark = pytest.mark.slow


def rt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rt", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def test_user_add_prints_the_token_alone_on_its_last_line(tmp_path):
    db = str(tmp_path / "rt.db")
    made = rt("user", "add", "carol", "--db", db)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("rt_") and " " not in token
    again = rt("user", "add", "carol", "--db", db)
    assert again.returncode != 0
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
    bad = rt("user", "add", "Not A Name", "--db", db)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    listed = rt("user", "list", "--db", db)
    assert listed.stdout.split() == ["carol"]
    second = rt("user", "token", "carol", "--db", db).stdout.strip()
    assert second.startswith("rt_") and second != token
    unknown = rt("user", "token", "nobody", "--db", db)
    assert unknown.returncode != 0 and "no user named nobody" in unknown.stderr


def test_flow_add_and_list(tmp_path):
    db = str(tmp_path / "rt.db")
    rt("user", "add", "dan", "--db", db)
    rt("user", "add", "eve", "--db", db)
    assert rt("flow", "add", "open", "--db", db).returncode == 0
    made = rt("flow", "add", "team", "--private", "--owner", "dan", "--member", "eve", "--db", db)
    assert made.returncode == 0, made.stderr
    listed = rt("flow", "list", "--db", db).stdout.splitlines()
    assert listed[0] == "open"
    assert listed[1].startswith("team") and "owner dan" in listed[1] and "eve" in listed[1]
    dup = rt("flow", "add", "open", "--db", db)
    assert dup.returncode != 0 and "already exists" in dup.stderr


def test_python_dash_m_rt_is_the_rt_command():
    via_module = rt("--help")
    assert via_module.returncode == 0
    for command in ("serve", "demo", "user", "flow"):
        assert command in via_module.stdout
    serve_help = rt("serve", "--help").stdout
    for flag in (
        "--heartbeat",
        "--write-timeout",
        "--poll-timeout",
        "--poll-linger",
        "--rotate-bytes",
        "--presence-grace",
        "--window",
        "--ops-rate",
        "--ops-burst",
        "--guest-rate",
        "--max-streams",
        "--buffer-objects",
        "--allow-origin",
        "--metrics-token",
        "--sync",
        "--guests",
    ):
        assert flag in serve_help, flag


async def test_cli_changes_reach_a_running_server_within_a_second(tmp_path):
    db = tmp_path / "rt.db"
    server = RtProcess("--user", "frank", "--flow", "general", db=db)
    token = server.tokens["frank"]
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with trio.fail_after(30):
            async with httpx.AsyncClient(timeout=10, headers=headers) as http:
                # a flow made by the CLI becomes usable
                assert rt("flow", "add", "later", "--db", str(db)).returncode == 0
                started = time.monotonic()
                while (await http.get(f"{server.url}/flows/later/messages")).status_code != 200:
                    assert time.monotonic() - started < 1.5
                    await trio.sleep(0.05)
                # a revoked token closes the user's live stream with `unauthorized`
                params = {"flows": "general", "client": "cli-test-client-01"}
                async with http.stream("GET", f"{server.url}/stream/sse", params=params) as s:
                    lines = s.aiter_lines()
                    async for line in lines:
                        if line.startswith("data: ") and '"ready"' in line:
                            break
                    revoked = rt("user", "token", "frank", "--revoke", "--db", str(db))
                    assert revoked.returncode == 0, revoked.stderr
                    started = time.monotonic()
                    close = None
                    async for line in lines:
                        if line.startswith("data: ") and '"close"' in line:
                            close = json.loads(line[6:])
                            break
                    assert close == {"type": "close", "reason": "unauthorized"}
                    assert time.monotonic() - started < 1.5
                r = await http.get(f"{server.url}/me")
                assert r.status_code == 401
    finally:
        server.kill()
