"""`rt serve --chaos` and `--delivery-record` (LAB.md section 4 `server`, section 3).

Every forced answer is one PROTOCOL.md allows: each kind is forced by hand
(`Chaos.force`) and checked on the wire; the schedule is checked to force
them on its own; the record is checked against what streams delivered.
"""

from __future__ import annotations

import json
import logging

import pytest
import trio

from rt.service.chaos import KINDS, ChaosSpecError, parse_spec
from tests.clients import open_stream
from tests.helpers import client_id, new_flow, new_user, serve_rt, uuid, wait_for, ws_stream


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", dict.fromkeys(KINDS, 10.0)),
        ("lagging", {"lagging": 10.0}),
        ("429:every=3s,slow_ack:every=500ms", {"429": 3.0, "slow_ack": 0.5}),
        ("all:every=1m", dict.fromkeys(KINDS, 60.0)),
        (" rotate , 503 ", {"rotate": 10.0, "503": 10.0}),
    ],
)
def test_specs_parse(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("", "empty"),
        ("bogus", "unknown chaos kind 'bogus'"),
        ("lagging:p=1", "only key"),
        ("lagging:every=soon", "not a duration"),
        ("lagging:every=0s", "above zero"),
    ],
)
def test_bad_specs_say_what_is_allowed(spec, says):
    with pytest.raises(ChaosSpecError) as info:
        parse_spec(spec)
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("kind", "transport"),
    [
        ("lagging", "ws"),
        ("shutdown", "sse"),
        ("superseded", "xhr"),
        ("rotate", "multipart"),
        ("superseded", "poll"),
    ],
)
async def test_forced_closes_are_legal_closes(kind, transport):
    with trio.fail_after(15):
        async with serve_rt(chaos="all:every=1000s", chaos_seed=1) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            async with open_stream(alice, transport, ["general"]) as s:
                assert (await s.next())["type"] == "ready"
                if transport == "poll":  # a poll must be waiting to hear it
                    await wait_for(
                        lambda: all(x.pending for x in server.service.claims.claimants())
                    )
                assert server.service.chaos.force(kind)
                close = await s.closing()
                assert close["reason"] == kind
                if kind == "lagging":
                    assert 0 <= close["retry_ms"] <= 1000
                elif kind == "shutdown":
                    assert 1000 <= close["retry_ms"] <= 5000
                elif kind == "rotate":
                    assert close["retry_ms"] == 0
                else:
                    assert "retry_ms" not in close
            await alice.aclose()


async def test_rotation_is_forced_only_on_rotating_transports():
    with trio.fail_after(10):
        async with serve_rt(chaos="rotate:every=1000s") as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            async with open_stream(alice, "ws", ["general"]) as ws:
                assert (await ws.next())["type"] == "ready"
                assert not server.service.chaos.force("rotate")  # nothing to rotate
            await alice.aclose()


async def test_forced_429_and_503_are_answered_with_retry_after():
    with trio.fail_after(10):
        async with serve_rt(chaos="all:every=1000s", chaos_seed=3) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            chaos = server.service.chaos
            chaos.force("429")
            r = await alice.post("general", "one", "uuid-chaos-0001")
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["Retry-After"]) >= 1
            r = await alice.post("general", "one", "uuid-chaos-0001")  # the retry succeeds
            assert r.status_code == 201
            chaos.force("503")
            r = await alice.http.get(
                "/stream/poll", params={"flows": "general", "client": client_id()}
            )
            assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
            assert "Retry-After" in r.headers
            history = await alice.history("general")
            assert [m["content"] for m in history["messages"]] == ["one"]
            await alice.aclose()


async def test_slow_ack_and_ack_after_echo():
    with trio.fail_after(15):
        async with serve_rt(chaos="all:every=1000s", chaos_seed=5) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            chaos = server.service.chaos
            chaos.force("slow_ack")
            started = trio.current_time()
            assert (await alice.post("general", "slow")).status_code == 201
            assert trio.current_time() - started >= 0.5
            async with ws_stream(alice, ["general"]) as ws:
                assert (await ws.next())["type"] == "ready"
                chaos.force("ack_after_echo")
                await ws.send(
                    {
                        "op": "post",
                        "flow": "general",
                        "content": "echo first",
                        "uuid": uuid(),
                        "ref": "r1",
                    }
                )
                first = await ws.until(lambda o: o.get("type") in ("ack", "message"))
                assert first["type"] == "message" and first["content"] == "echo first"
                ack = await ws.until(lambda o: o.get("type") == "ack")
                assert ack["event"]["id"] == first["id"]
            await alice.aclose()


async def test_the_schedule_forces_answers_on_its_own_and_says_so(caplog):
    with trio.fail_after(15), caplog.at_level(logging.INFO, logger="rt.chaos"):
        async with serve_rt(chaos="lagging:every=0.2s,429:every=0.2s", chaos_seed=9) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            async with open_stream(alice, "sse", ["general"]) as s:
                assert (await s.next())["type"] == "ready"
                assert (await s.closing())["reason"] == "lagging"
            statuses = set()
            while 429 not in statuses:
                statuses.add((await alice.post("general", "x")).status_code)
            assert statuses <= {201, 429}
            await alice.aclose()
    assert "--chaos is ON" in caplog.text
    assert any(r.levelno == logging.WARNING for r in caplog.records)


async def test_chaos_is_off_by_default():
    async with serve_rt() as server:
        assert server.service.chaos is None and server.service.delivery_record is None


async def test_the_delivery_record_names_each_stream_and_what_it_delivered(tmp_path):
    record = tmp_path / "deliveries.jsonl"
    with trio.fail_after(15):
        async with serve_rt(delivery_record=str(record)) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            client = client_id()
            posted = []
            async with open_stream(alice, "ws", ["general"], client=client) as first:
                assert (await first.next())["type"] == "ready"
                posted.append((await alice.post("general", "a")).json()["id"])
                assert (await first.stored())["id"] == posted[-1]
                async with open_stream(alice, "poll", ["general"], client=client) as second:
                    assert (await second.next())["type"] == "ready"  # supersedes the first
                    posted.append((await alice.post("general", "b")).json()["id"])
                    assert (await second.stored())["id"] == posted[-1]
            await alice.aclose()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(x["transport"], x["first"], x["last"], x["n"]) for x in lines] == [
        ("ws", posted[0], posted[0], 1),
        ("poll", posted[1], posted[1], 1),
    ]
    assert {x["user"] for x in lines} == {"alice"} and {x["client"] for x in lines} == {client}
    assert lines[0]["stream"] != lines[1]["stream"]
    assert lines[0]["t"] < lines[1]["t"]


async def test_stopped_chaos_forces_nothing_more():
    with trio.fail_after(10):
        async with serve_rt(chaos="all:every=0.05s", chaos_seed=2) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            chaos = server.service.chaos
            chaos.stop()
            forced = dict(chaos.forced)
            assert not chaos.force("429")
            statuses = {(await alice.post("general", f"m{i}")).status_code for i in range(20)}
            assert statuses == {201} and chaos.forced == forced
            await alice.aclose()
