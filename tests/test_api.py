"""Tier 2: the HTTP API of PROTOCOL.md section 4 against a real in-process server.

Every row of the route table with its status codes and error bodies, the
grammars of section 1 as seen through HTTP, the idempotency rules of
section 2, rate limits, draining and CORS. Real sockets, real httpx.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import trio

from tests.helpers import Api, client_id, new_flow, new_user, serve_rt, sse_stream, uuid

STATE_KEYS = {"id", "flow", "user", "sent", "content", "tags", "edited", "deleted"}
EVENT_KEYS = {"id", "flow", "type", "user", "sent", "uuid"}
EPOCH_RE = re.compile(r"[A-Za-z0-9_-]{8,32}")


def assert_error(r: httpx.Response, status: int, code: str) -> str:
    """Assert the PROTOCOL.md error shape `{"error":{"code","message"}}`; return the message."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body["error"]["message"]


def retry_after(r: httpx.Response) -> int:
    value = int(r.headers["Retry-After"])
    assert value >= 1, r.headers
    return value


async def post(api: Api, flow: str, content: str = "hello", uid: str | None = None) -> dict:
    r = await api.post(flow, content, uid)
    assert r.status_code == 201, r.text
    return r.json()


async def edit(
    api: Api, flow: str, message: int, content: str, uid: str | None = None
) -> httpx.Response:
    return await api.http.patch(
        f"/flows/{flow}/messages/{message}", json={"content": content, "uuid": uid or uuid()}
    )


async def tag(
    api: Api, flow: str, message: int, add: Any = (), remove: Any = (), uid: str | None = None
) -> httpx.Response:
    return await api.http.post(
        f"/flows/{flow}/messages/{message}/tags",
        json={"add": list(add), "remove": list(remove), "uuid": uid or uuid()},
    )


async def delete(api: Api, flow: str, message: int, uid: str | None = None) -> httpx.Response:
    return await api.http.delete(
        f"/flows/{flow}/messages/{message}", params={"uuid": uid or uuid()}
    )


def anonymous(server) -> Api:
    return Api(server)


# -- public routes -------------------------------------------------------------


async def test_health_and_info_need_no_auth(server):
    with trio.fail_after(10):
        anon = anonymous(server)
        try:
            r = await anon.http.get("/health")
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/json; charset=utf-8"
            assert r.json() == {"status": "ok"}
            r = await anon.http.get("/info")
            assert r.status_code == 200
            info = r.json()
            assert info["protocol"] == 1
            assert isinstance(info["version"], str) and info["version"]
            assert "sse" in info["transports"] and "ws" in info["transports"]
            limits = info["limits"]
            assert limits["max-body"] == 65536
            assert limits["ops-rate"] == 20
            assert limits["ops-burst"] == 50
            assert limits["heartbeat"] == 15
        finally:
            await anon.aclose()


# -- /auth ------------------------------------------------------------------------


async def test_guest_accounts(server, alice):
    with trio.fail_after(10):
        anon = anonymous(server)
        try:
            r = await anon.http.post("/auth/guest", json={"name": "carol"})
            assert r.status_code == 201, r.text
            body = r.json()
            assert set(body) == {"user", "token"}
            assert body["user"] == "carol"
            token = body["token"]
            assert isinstance(token, str) and len(token) >= 16
            r = await anon.http.get("/me", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
            assert r.json()["user"] == "carol"
            # taken: by a guest, or by a registered user
            assert_error(await anon.http.post("/auth/guest", json={"name": "carol"}), 409, "exists")
            assert_error(await anon.http.post("/auth/guest", json={"name": "alice"}), 409, "exists")
            for bad in ("Carol", "-x", "", "x" * 33, "a b", 5, None, ["dave"]):
                r = await anon.http.post("/auth/guest", json={"name": bad})
                assert_error(r, 400, "bad_request")
            assert_error(await anon.http.post("/auth/guest", json={}), 400, "bad_request")
            assert_error(await anon.http.post("/auth/guest"), 400, "bad_request")
        finally:
            await anon.aclose()


async def test_guests_disabled_is_404():
    with trio.fail_after(10):
        async with serve_rt(guests=False) as server:
            anon = anonymous(server)
            try:
                r = await anon.http.post("/auth/guest", json={"name": "carol"})
                assert_error(r, 404, "not_found")
                assert server.service.directory.user_exists("carol") is False
            finally:
                await anon.aclose()


async def test_guest_rate_limit():
    with trio.fail_after(10):
        async with serve_rt(guest_rate=2) as server:
            anon = anonymous(server)
            try:
                for name in ("g1", "g2"):
                    r = await anon.http.post("/auth/guest", json={"name": name})
                    assert r.status_code == 201, r.text
                r = await anon.http.post("/auth/guest", json={"name": "g3"})
                assert_error(r, 429, "rate_limited")
                # 2 a minute: the next one is about 30 s away
                assert 20 <= retry_after(r) <= 31
                assert server.service.directory.user_exists("g3") is False
            finally:
                await anon.aclose()


async def test_ticket(server, alice):
    with trio.fail_after(10):
        before = time.time() * 1000
        r = await alice.http.post("/auth/ticket", json={"client": client_id()})
        after = time.time() * 1000
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"ticket", "expires"}
        assert isinstance(body["ticket"], str) and len(body["ticket"]) >= 16
        assert isinstance(body["expires"], int)
        # the default life is 60 s from issue
        assert before + 59_000 <= body["expires"] <= after + 61_000
        r2 = await alice.http.post("/auth/ticket", json={"client": client_id()})
        assert r2.json()["ticket"] != body["ticket"]
        for bad in ("short", "x" * 65, "has space in it!!", 16, None, ["a" * 16]):
            r = await alice.http.post("/auth/ticket", json={"client": bad})
            assert_error(r, 400, "bad_request")
        assert_error(await alice.http.post("/auth/ticket", json={}), 400, "bad_request")
        anon = anonymous(server)
        try:
            r = await anon.http.post("/auth/ticket", json={"client": client_id()})
            assert_error(r, 401, "unauthorized")
            r = await anon.http.post(
                "/auth/ticket",
                json={"client": client_id()},
                headers={"Authorization": "Bearer rt_not-a-token"},
            )
            assert_error(r, 401, "unauthorized")
            r = await anon.http.post(
                "/auth/ticket",
                json={"client": client_id()},
                headers={"Authorization": f"Basic {alice.token}"},
            )
            assert_error(r, 401, "unauthorized")
        finally:
            await anon.aclose()


async def test_me(server, alice, bob):
    with trio.fail_after(10):
        await new_flow(server, "secret", private=True, owner="bob")
        r = await alice.http.get("/me")
        assert r.status_code == 200
        assert r.json() == {"user": "alice", "flows": ["general"]}
        r = await bob.http.get("/me")
        assert r.json() == {"user": "bob", "flows": ["general", "secret"]}
        anon = anonymous(server)
        try:
            assert_error(await anon.http.get("/me"), 401, "unauthorized")
        finally:
            await anon.aclose()


# -- flows and members ---------------------------------------------------------------


async def test_flows_list_and_create(server, alice, bob):
    with trio.fail_after(10):
        r = await alice.http.get("/flows")
        assert r.status_code == 200
        assert r.json() == {"flows": [{"name": "general", "private": False, "owner": None}]}
        r = await alice.http.post("/flows", json={"name": "team"})
        assert r.status_code == 201, r.text
        assert r.json() == {"name": "team", "private": False, "owner": "alice"}
        r = await alice.http.post("/flows", json={"name": "hidden", "private": True})
        assert r.status_code == 201, r.text
        assert r.json() == {"name": "hidden", "private": True, "owner": "alice"}
        assert_error(await alice.http.post("/flows", json={"name": "team"}), 409, "exists")
        assert_error(await bob.http.post("/flows", json={"name": "hidden"}), 409, "exists")
        names = [f["name"] for f in (await alice.http.get("/flows")).json()["flows"]]
        assert names == ["general", "hidden", "team"]
        # private flows are invisible to non-members
        names = [f["name"] for f in (await bob.http.get("/flows")).json()["flows"]]
        assert names == ["general", "team"]
        assert (await bob.http.get("/me")).json()["flows"] == ["general", "team"]
        assert (await alice.http.get("/me")).json()["flows"] == ["general", "hidden", "team"]
        # the creator is a member and may post
        assert (await alice.post("hidden", "x")).status_code == 201
        for bad in ("Team", "_x", "-x", "", "x" * 65, "a.b", "a b", "é", 5, None, True):
            assert_error(await alice.http.post("/flows", json={"name": bad}), 400, "bad_request")
        assert server.service.directory.flow("a.b") is None
        assert_error(
            await alice.http.post("/flows", json={"name": "ok", "private": "yes"}),
            400,
            "bad_request",
        )
        assert_error(
            await alice.http.post("/flows", json={"name": "ok", "private": 1}), 400, "bad_request"
        )
        assert server.service.directory.flow("ok") is None
        assert (await alice.http.post("/flows", json={"name": "x" * 64})).status_code == 201
        anon = anonymous(server)
        try:
            assert_error(await anon.http.get("/flows"), 401, "unauthorized")
            assert_error(await anon.http.post("/flows", json={"name": "zz"}), 401, "unauthorized")
        finally:
            await anon.aclose()


async def test_add_member(server, anon, alice, bob):
    with trio.fail_after(10):
        carol = await new_user(server, "carol")
        try:
            assert (
                await alice.http.post("/flows", json={"name": "club", "private": True})
            ).status_code == 201
            assert_error(await bob.http.get("/flows/club/messages"), 403, "forbidden")
            for _ in range(2):  # 204 whether or not bob already was a member
                r = await alice.http.post("/flows/club/members", json={"user": "bob"})
                assert r.status_code == 204, r.text
                assert r.content == b""
            assert (await bob.http.get("/flows/club/messages")).status_code == 200
            assert "club" in (await bob.http.get("/me")).json()["flows"]
            r = await alice.http.post("/flows/club/members", json={"user": "nobody"})
            assert_error(r, 404, "not_found")
            # a member who is not the owner may not add members
            r = await bob.http.post("/flows/club/members", json={"user": "carol"})
            assert_error(r, 403, "forbidden")
            assert_error(await carol.http.get("/flows/club/messages"), 403, "forbidden")
            # a non-member of a private flow, and a non-owner of an open one
            r = await carol.http.post("/flows/club/members", json={"user": "carol"})
            assert_error(r, 403, "forbidden")
            r = await bob.http.post("/flows/general/members", json={"user": "carol"})
            assert_error(r, 403, "forbidden")
            r = await alice.http.post("/flows/nope/members", json={"user": "bob"})
            assert_error(r, 404, "not_found")
            for bad in ("Bob", 5, None):
                r = await alice.http.post("/flows/club/members", json={"user": bad})
                assert_error(r, 400, "bad_request")
            r = await anon.http.request("POST", "/flows/club/members", json={"user": "carol"})
            assert_error(r, 401, "unauthorized")
        finally:
            await carol.aclose()


async def test_remove_member(server, anon, alice, bob):
    with trio.fail_after(10):
        carol = await new_user(server, "carol")
        try:
            await alice.http.post("/flows", json={"name": "club", "private": True})
            for name in ("bob", "carol"):
                r = await alice.http.post("/flows/club/members", json={"user": name})
                assert r.status_code == 204
            # a member may not remove another
            assert_error(await bob.http.delete("/flows/club/members/carol"), 403, "forbidden")
            assert (await carol.http.get("/flows/club/messages")).status_code == 200
            # the owner removes
            r = await alice.http.delete("/flows/club/members/carol")
            assert r.status_code == 204, r.text
            assert_error(await carol.http.get("/flows/club/messages"), 403, "forbidden")
            assert "club" not in (await carol.http.get("/me")).json()["flows"]
            # a member leaves
            r = await bob.http.delete("/flows/club/members/bob")
            assert r.status_code == 204, r.text
            assert_error(await bob.http.get("/flows/club/messages"), 403, "forbidden")
            # the owner keeps access
            assert (await alice.http.get("/flows/club/messages")).status_code == 200
            assert_error(await alice.http.delete("/flows/nope/members/bob"), 404, "not_found")
            assert_error(await alice.http.delete("/flows/club/members/Bob"), 400, "bad_request")
            r = await anon.http.request("DELETE", "/flows/club/members/alice")
            assert_error(r, 401, "unauthorized")
        finally:
            await carol.aclose()


# -- history -----------------------------------------------------------------------


async def test_history_paging(server, alice, bob):
    with trio.fail_after(10):
        await new_flow(server, "other")
        ids = []
        for i in range(7):
            ids.append((await post(alice if i % 2 else bob, "general", f"m{i}"))["id"])
            await post(alice, "other", f"o{i}")  # interleaved ids in another flow
        head = server.service.feed.head

        def page_ids(page: dict) -> list[int]:
            return [m["id"] for m in page["messages"]]

        page = await alice.history("general")
        assert set(page) == {"cursor", "epoch", "messages"}
        assert page["cursor"] == head
        assert EPOCH_RE.fullmatch(page["epoch"])
        assert page_ids(page) == ids
        first = page["messages"][0]
        assert set(first) == STATE_KEYS
        assert first["content"] == "m0" and first["user"] == "bob" and first["flow"] == "general"
        assert first["tags"] == [] and first["edited"] is False and first["deleted"] is False
        assert page_ids(await alice.history("general", limit=3)) == ids[-3:]
        assert page_ids(await alice.history("general", after=ids[1], limit=2)) == ids[2:4]
        assert page_ids(await alice.history("general", after=ids[1])) == ids[2:]
        assert page_ids(await alice.history("general", before=ids[5], limit=2)) == ids[3:5]
        assert page_ids(await alice.history("general", before=ids[5])) == ids[:5]
        assert (
            page_ids(await alice.history("general", after=ids[0], before=ids[6], limit=3))
            == ids[1:4]
        )
        assert page_ids(await alice.history("general", after=ids[0], before=ids[6])) == ids[1:6]
        assert page_ids(await alice.history("general", after=ids[3], before=ids[3])) == []
        assert page_ids(await alice.history("general", after=head)) == []
        assert page_ids(await alice.history("general", limit=500)) == ids
        # the epoch is the log's: the same for every page and in a stream's ready
        async with sse_stream(alice, ["general"]) as sse:
            ready = await sse.next()
            assert ready["type"] == "ready"
            assert ready["epoch"] == page["epoch"]
            assert ready["cursor"] == page["cursor"]
        last = await post(bob, "general", "late")
        page2 = await alice.history("general", limit=1)
        assert page2["cursor"] == last["id"] > head
        assert page2["epoch"] == page["epoch"]
        assert page_ids(page2) == [last["id"]]


async def test_history_default_limit_is_50(server, alice, bob):
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            for i in range(55):  # two users: each stays within the burst of 50
                nursery.start_soon(post, alice if i % 2 else bob, "general", f"m{i}")
        page = await alice.history("general")
        ids = sorted(
            s.id
            for s in await server.service.feed.history(
                "general", before=None, after=None, limit=100
            )
        )
        assert len(ids) == 55
        assert [m["id"] for m in page["messages"]] == ids[-50:]


async def test_history_bad_parameters(server, anon, alice):
    with trio.fail_after(10):
        await post(alice, "general")
        for params in (
            {"limit": "501"},
            {"limit": "0"},
            {"limit": "-1"},
            {"limit": "abc"},
            {"limit": "1.5"},
            {"limit": "１"},
            {"after": "x"},
            {"after": "-3"},
            {"before": "1e3"},
            {"before": " 1"},
            {"tag": ""},
            {"tag": "a\u200bb"},
            {"tag": "\u202eabc"},
            {"tag": "a b"},
            {"tag": "x" * 65},
        ):
            r = await alice.http.get("/flows/general/messages", params=params)
            assert_error(r, 400, "bad_request")
        r = await alice.http.get("/flows/general/messages", params={"limit": "500"})
        assert r.status_code == 200
        assert_error(await alice.http.get("/flows/nope/messages"), 404, "not_found")
        assert_error(await alice.http.get("/flows/Bad/messages"), 400, "bad_request")
        r = await anon.http.request("GET", "/flows/general/messages")
        assert_error(r, 401, "unauthorized")
        await new_flow(server, "secret", private=True)
        assert_error(await alice.http.get("/flows/secret/messages"), 403, "forbidden")


async def test_history_tag_filter_is_normalised(server, alice):
    with trio.fail_after(10):
        m1 = await post(alice, "general", "one")
        m2 = await post(alice, "general", "two")
        await post(alice, "general", "three")
        assert (await tag(alice, "general", m1["id"], add=["Foo"])).status_code == 200
        assert (await tag(alice, "general", m2["id"], add=["Straße"])).status_code == 200
        for query, expected in (
            ("FOO", [m1["id"]]),
            ("foo", [m1["id"]]),
            ("fOo", [m1["id"]]),
            ("STRASSE", [m2["id"]]),
            ("straße", [m2["id"]]),
            ("bar", []),
        ):
            page = await alice.history("general", tag=query)
            assert [m["id"] for m in page["messages"]] == expected, query
        page = await alice.history("general", tag="FOO")
        assert page["messages"][0]["tags"] == ["foo"]


# -- posting -----------------------------------------------------------------------


async def test_post(server, alice, bob):
    with trio.fail_after(10):
        uid = uuid()
        before = time.time() * 1000
        r = await alice.post("general", "hello <world> & e\u0301", uid)
        assert r.status_code == 201, r.text
        event = r.json()
        assert set(event) == EVENT_KEYS | {"content"}
        assert event["type"] == "message" and event["flow"] == "general"
        assert event["user"] == "alice" and event["uuid"] == uid
        assert event["content"] == "hello <world> & \u00e9"  # NFC
        assert before - 1000 <= event["sent"] <= time.time() * 1000 + 1000
        assert b"<" not in r.content and b"&" not in r.content  # framing-safe JSON
        # a retry returns the first answer and stores nothing
        head = server.service.feed.head
        r = await alice.post("general", "hello <world> & e\u0301", uid)
        assert r.status_code == 200, r.text
        assert r.json() == event
        assert server.service.feed.head == head
        # the same uuid for another op
        assert_error(await alice.post("general", "other", uid), 409, "uuid_mismatch")
        await new_flow(server, "other")
        assert_error(
            await alice.post("other", "hello <world> & e\u0301", uid), 409, "uuid_mismatch"
        )
        assert server.service.feed.head == head
        # uuids are per user: bob's same uuid is his own op
        r = await bob.post("general", "bob's", uid)
        assert r.status_code == 201, r.text
        assert r.json()["id"] != event["id"] and r.json()["user"] == "bob"
        # the uuid is required and has a grammar
        r = await alice.http.post("/flows/general/messages", json={"content": "x"})
        assert_error(r, 400, "bad_request")
        for bad in ("short", "x" * 65, "has space", 12345678, None):
            r = await alice.http.post("/flows/general/messages", json={"content": "x", "uuid": bad})
            assert_error(r, 400, "bad_request")
        r = await alice.http.post("/flows/general/messages", json={"uuid": uuid()})
        assert_error(r, 400, "bad_request")


async def test_post_refusals_consume_nothing(server, alice, bob):
    with trio.fail_after(10):
        await new_flow(server, "secret", private=True, owner="bob")
        uid = uuid()
        assert_error(await alice.post("nope", "hi", uid), 404, "not_found")
        assert_error(await alice.post("secret", "hi", uid), 403, "forbidden")
        anon = anonymous(server)
        try:
            r = await anon.http.post("/flows/general/messages", json={"content": "hi", "uuid": uid})
            assert_error(r, 401, "unauthorized")
            r = await anon.http.post(
                "/flows/general/messages",
                json={"content": "hi", "uuid": uid},
                headers={"Authorization": "Bearer rt_wrong"},
            )
            assert_error(r, 401, "unauthorized")
        finally:
            await anon.aclose()
        assert server.service.feed.head == 0
        # the uuid was not consumed by the failures
        r = await alice.post("general", "hi", uid)
        assert r.status_code == 201, r.text
        assert (await alice.history("general"))["messages"][0]["content"] == "hi"


async def test_op_checks_run_in_protocol_order(server, anon, alice, bob):
    """PROTOCOL.md section 2: validation (400, 413) first, then auth and access, then the uuid."""
    with trio.fail_after(10):
        await new_flow(server, "secret", private=True, owner="bob")
        m = await post(alice, "general", "x")
        msgs = "/flows/general/messages"
        bad_body = {"content": "x", "uuid": "short"}
        # without a token: a bad request is still a bad request
        for method, path, body, status, code in (
            ("POST", msgs, b"not json", 400, "bad_request"),
            ("POST", msgs, bad_body, 400, "bad_request"),
            ("POST", msgs, {"content": "x" * 16385, "uuid": uuid()}, 413, "too_large"),
            ("PATCH", f"{msgs}/{m['id']}", {"content": "", "uuid": uuid()}, 400, "bad_request"),
            (
                "POST",
                f"{msgs}/{m['id']}/tags",
                {"add": ["a b"], "uuid": uuid()},
                400,
                "bad_request",
            ),
            ("DELETE", f"{msgs}/{m['id']}", None, 400, "bad_request"),
            ("POST", msgs, {"content": "x", "uuid": uuid()}, 401, "unauthorized"),
        ):
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = await anon.http.request(method, path, **kwargs)
            assert_error(r, status, code)
        # validation before access to the flow
        r = await alice.http.post("/flows/secret/messages", json=bad_body)
        assert_error(r, 400, "bad_request")
        r = await alice.http.post("/flows/nope/messages", json=bad_body)
        assert_error(r, 400, "bad_request")
        # validation before the uuid: a used uuid with a bad op is a 400, not a 409
        r = await alice.post("general", "", m["uuid"])
        assert_error(r, 400, "bad_request")
        # access before the uuid: a used uuid on a forbidden flow is a 403
        r = await alice.post("secret", "x", m["uuid"])
        assert_error(r, 403, "forbidden")
        # the uuid before the message checks: a used uuid is answered even if its
        # message has since gone, and a mismatch wins over a 404
        r = await alice.http.patch(f"{msgs}/999999", json={"content": "y", "uuid": m["uuid"]})
        assert_error(r, 409, "uuid_mismatch")


async def test_post_body_over_max_body_is_413():
    with trio.fail_after(10):
        async with serve_rt(max_body=1024) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            try:
                r = await alice.post("general", "x" * 2000)
                assert_error(r, 413, "too_large")
                r = await alice.post("general", "x" * 900)
                assert r.status_code == 201, r.text
                assert server.service.feed.head == 1
            finally:
                await alice.aclose()


async def test_chunked_body_over_max_body_is_413():
    with trio.fail_after(10):
        async with serve_rt(max_body=1024) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            try:

                async def chunks():
                    yield b'{"uuid":"abcdefgh","content":"'
                    for _ in range(10):
                        yield b"x" * 200
                    yield b'"}'

                r = await alice.http.post("/flows/general/messages", content=chunks())
                assert_error(r, 413, "too_large")
                assert server.service.feed.head == 0
            finally:
                await alice.aclose()


async def test_unknown_routes_and_methods(server, anon, alice):
    with trio.fail_after(10):
        assert_error(await anon.http.get("/nope"), 404, "not_found")
        assert_error(await alice.http.get("/flows/general/nope"), 404, "not_found")
        r = await alice.http.get("/stream/nope", params={"flows": "general", "client": client_id()})
        assert_error(r, 404, "not_found")
        r = await alice.http.put("/flows/general/messages", json={})
        assert_error(r, 405, "bad_request")


async def test_content_over_16_kib_is_413(server, alice):
    with trio.fail_after(10):
        assert_error(await alice.post("general", "x" * 16385), 413, "too_large")
        # 8193 two-byte characters: under 16 Ki code points, over 16 KiB of UTF-8
        assert_error(await alice.post("general", "\u00e9" * 8193), 413, "too_large")
        # decomposed: 16386 bytes before NFC, 16384 after: NFC first, then the limit
        r = await alice.post("general", "e\u0301" * 5461 + "x")
        assert r.status_code == 201, r.text
        assert r.json()["content"] == "\u00e9" * 5461 + "x"
        r = await alice.post("general", "x" * 16384)
        assert r.status_code == 201, r.text
        assert len(r.json()["content"]) == 16384


# -- edit, tags, delete ------------------------------------------------------------------


async def test_edit(server, anon, alice, bob):
    with trio.fail_after(10):
        m = await post(alice, "general", "first")
        uid = uuid()
        r = await edit(alice, "general", m["id"], "second", uid)
        assert r.status_code == 200, r.text
        e = r.json()
        assert set(e) == EVENT_KEYS | {"message", "content"}
        assert e["type"] == "edit" and e["message"] == m["id"] and e["content"] == "second"
        assert e["user"] == "alice" and e["uuid"] == uid and e["id"] > m["id"]
        state = (await alice.history("general"))["messages"][0]
        assert state["content"] == "second" and state["edited"] == e["id"]
        # retry
        r = await edit(alice, "general", m["id"], "second", uid)
        assert r.status_code == 200 and r.json() == e
        assert_error(await edit(alice, "general", m["id"], "third", uid), 409, "uuid_mismatch")
        # no-op: the same content
        head = server.service.feed.head
        noop_uid = uuid()
        r = await edit(alice, "general", m["id"], "second", noop_uid)
        assert r.status_code == 200, r.text
        assert r.json() == {"changed": False, "state": state}
        assert server.service.feed.head == head
        r = await edit(alice, "general", m["id"], "second", noop_uid)  # its retry
        assert r.status_code == 200 and r.json() == {"changed": False, "state": state}
        # refusals
        assert_error(await edit(bob, "general", m["id"], "bob's"), 403, "forbidden")
        assert_error(await edit(alice, "general", 999999, "x"), 404, "not_found")
        await new_flow(server, "other")
        assert_error(await edit(alice, "other", m["id"], "x"), 404, "not_found")
        assert_error(await edit(alice, "nope", m["id"], "x"), 404, "not_found")
        for bad_id in ("abc", "0", "-1", "1.0"):
            r = await alice.http.patch(
                f"/flows/general/messages/{bad_id}", json={"content": "x", "uuid": uuid()}
            )
            assert_error(r, 400, "bad_request")
        assert_error(await edit(alice, "general", m["id"], " \u200b "), 400, "bad_request")
        r = await alice.http.patch(f"/flows/general/messages/{m['id']}", json={"content": "x"})
        assert_error(r, 400, "bad_request")
        r = await anon.http.request(
            "PATCH", f"/flows/general/messages/{m['id']}", json={"content": "x", "uuid": uuid()}
        )
        assert_error(r, 401, "unauthorized")
        # deleted
        assert (await delete(alice, "general", m["id"])).status_code == 200
        assert_error(await edit(alice, "general", m["id"], "after"), 409, "deleted")
        # deleting blanks the edit's content in retries too
        r = await edit(alice, "general", m["id"], "second", uid)
        assert r.status_code == 200
        assert r.json() == {**e, "content": ""}


async def test_tags(server, alice, bob):
    with trio.fail_after(10):
        m = await post(alice, "general", "tag me")
        uid = uuid()
        r = await tag(
            alice, "general", m["id"], add=["Foo", "foo", "bar", "Straße", "#Hash"], uid=uid
        )
        assert r.status_code == 200, r.text
        e = r.json()
        assert set(e) == EVENT_KEYS | {"message", "add", "remove", "tags"}
        assert e["type"] == "tag" and e["message"] == m["id"]
        assert e["add"] == ["#hash", "bar", "foo", "strasse"]
        assert e["remove"] == []
        assert e["tags"] == ["#hash", "bar", "foo", "strasse"]
        r = await tag(
            alice, "general", m["id"], add=["Foo", "foo", "bar", "Straße", "#Hash"], uid=uid
        )
        assert r.status_code == 200 and r.json() == e
        assert_error(
            await tag(alice, "general", m["id"], add=["other"], uid=uid), 409, "uuid_mismatch"
        )
        # anyone who can write the flow may tag; add and remove list what was sent
        r = await tag(bob, "general", m["id"], add=["BAR", "new"], remove=["#HASH", "absent"])
        assert r.status_code == 200, r.text
        e2 = r.json()
        assert e2["user"] == "bob"
        assert e2["add"] == ["bar", "new"] and e2["remove"] == ["#hash", "absent"]
        assert e2["tags"] == ["bar", "foo", "new", "strasse"]
        # no-ops
        head = server.service.feed.head
        state = (await alice.history("general"))["messages"][0]
        assert state["tags"] == ["bar", "foo", "new", "strasse"]
        r = await tag(alice, "general", m["id"], add=["FOO"])
        assert r.status_code == 200 and r.json() == {"changed": False, "state": state}
        r = await tag(alice, "general", m["id"], remove=["missing"])
        assert r.status_code == 200 and r.json() == {"changed": False, "state": state}
        assert server.service.feed.head == head
        # limits: 64 code points and 32 tags
        assert (await tag(alice, "general", m["id"], add=["é" * 64])).status_code == 200
        assert_error(await tag(alice, "general", m["id"], add=["é" * 65]), 400, "bad_request")
        assert_error(
            await tag(alice, "general", m["id"], add=[f"t{i}" for i in range(33)]),
            400,
            "bad_request",
        )
        # bad tags
        for bad in (
            "a\u200bb",
            "\u200d",
            "\u202eevil",
            "a\u2066b",
            "a b",
            "a\u00a0b",
            "a\tb",
            "a\nb",
            "a\x00b",
            "",
            "\u2028",
            5,
            None,
            ["x"],
        ):
            r = await tag(alice, "general", m["id"], add=[bad])
            assert_error(r, 400, "bad_request")
            r = await tag(alice, "general", m["id"], remove=[bad])
            assert_error(r, 400, "bad_request")
        assert_error(await tag(alice, "general", m["id"]), 400, "bad_request")  # nothing
        assert_error(
            await tag(alice, "general", m["id"], add=["x"], remove=["X"]), 400, "bad_request"
        )
        assert_error(await tag(alice, "general", 999999, add=["x"]), 404, "not_found")
        await new_flow(server, "secret", private=True, owner="alice")
        assert_error(await tag(bob, "secret", m["id"], add=["x"]), 403, "forbidden")
        assert (await delete(alice, "general", m["id"])).status_code == 200
        assert_error(await tag(alice, "general", m["id"], add=["x"]), 409, "deleted")
        assert_error(await tag(alice, "general", m["id"], remove=["foo"]), 409, "deleted")


async def test_uuid_rules_across_op_kinds(server, alice, bob):
    with trio.fail_after(10):
        m = await post(alice, "general", "x")
        # the same uuid for another kind of op
        assert_error(await edit(alice, "general", m["id"], "y", m["uuid"]), 409, "uuid_mismatch")
        assert_error(
            await tag(alice, "general", m["id"], add=["t"], uid=m["uuid"]), 409, "uuid_mismatch"
        )
        assert_error(await delete(alice, "general", m["id"], m["uuid"]), 409, "uuid_mismatch")
        # a refused op consumes no uuid
        uid = uuid()
        assert_error(await edit(bob, "general", m["id"], "bob's", uid), 403, "forbidden")
        assert_error(await delete(bob, "general", m["id"], uid), 403, "forbidden")
        r = await bob.post("general", "bob's own", uid)
        assert r.status_code == 201, r.text
        # a no-op consumes its uuid, and its retry gets the body it got first
        noop = uuid()
        r = await tag(alice, "general", m["id"], remove=["absent"], uid=noop)
        first = r.json()
        assert r.status_code == 200 and first["changed"] is False
        assert first["state"]["tags"] == []
        assert (await tag(alice, "general", m["id"], add=["later"])).status_code == 200
        r = await tag(alice, "general", m["id"], remove=["absent"], uid=noop)
        assert r.status_code == 200 and r.json() == first
        assert_error(
            await tag(alice, "general", m["id"], remove=["other"], uid=noop), 409, "uuid_mismatch"
        )


async def test_concurrent_tag_changes_lose_nothing(server, alice, bob):
    with trio.fail_after(10):
        m = await post(alice, "general", "popular")
        results: list[httpx.Response] = []

        async def add(api: Api, name: str) -> None:
            results.append(await tag(api, "general", m["id"], add=[name]))

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(add, alice if i % 2 else bob, f"t{i:02}")
        assert [r.status_code for r in results] == [200] * 12, [r.text for r in results]
        expected = [f"t{i:02}" for i in range(12)]
        assert (await alice.history("general"))["messages"][0]["tags"] == expected
        # each event's `tags` is the whole list after it: the last one has them all
        events = sorted((r.json() for r in results), key=lambda e: e["id"])
        assert events[-1]["tags"] == expected
        assert [len(e["tags"]) for e in events] == list(range(1, 13))


async def test_edit_never_lands_after_the_delete_it_raced(server, alice):
    with trio.fail_after(10):
        for _ in range(5):
            m = await post(alice, "general", "racy")
            results: dict[str, httpx.Response] = {}

            async def do_edit(mid: int, out: dict[str, httpx.Response]) -> None:
                out["edit"] = await edit(alice, "general", mid, "edited")

            async def do_delete(mid: int, out: dict[str, httpx.Response]) -> None:
                out["delete"] = await delete(alice, "general", mid)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(do_edit, m["id"], results)
                nursery.start_soon(do_delete, m["id"], results)
            d = results["delete"]
            assert d.status_code == 200 and d.json()["type"] == "delete", d.text
            e = results["edit"]
            if e.status_code == 200:
                assert e.json()["id"] < d.json()["id"]
            else:
                assert_error(e, 409, "deleted")
            state = (await alice.history("general", limit=1))["messages"][0]
            assert state["id"] == m["id"] and state["deleted"] is True
            assert state["content"] == ""


async def test_delete(server, anon, alice, bob):
    with trio.fail_after(10):
        m = await post(alice, "general", "to be deleted")
        # the author only (general has no owner)
        assert_error(await delete(bob, "general", m["id"]), 403, "forbidden")
        assert (await alice.history("general"))["messages"][0]["content"] == "to be deleted"
        uid = uuid()
        r = await delete(alice, "general", m["id"], uid)
        assert r.status_code == 200, r.text
        d = r.json()
        assert set(d) == EVENT_KEYS | {"message"}
        assert d["type"] == "delete" and d["message"] == m["id"] and d["user"] == "alice"
        r = await delete(alice, "general", m["id"], uid)  # retry
        assert r.status_code == 200 and r.json() == d
        state = (await alice.history("general"))["messages"][0]
        assert state == {**state, "id": m["id"], "content": "", "deleted": True}
        # deleting again is a no-op
        head = server.service.feed.head
        r = await delete(alice, "general", m["id"])
        assert r.status_code == 200, r.text
        assert r.json() == {"changed": False, "state": state}
        assert server.service.feed.head == head
        # the post's retry shows the blanked content too
        r = await alice.post("general", "to be deleted", m["uuid"])
        assert r.status_code == 200 and r.json() == {**m, "content": ""}
        assert_error(await delete(alice, "general", 999999), 404, "not_found")
        r = await alice.http.delete(f"/flows/general/messages/{m['id']}")
        assert_error(r, 400, "bad_request")  # no uuid
        r = await anon.http.request(
            "DELETE", f"/flows/general/messages/{m['id']}", params={"uuid": uuid()}
        )
        assert_error(r, 401, "unauthorized")


async def test_flow_owner_deletes_others_messages(server, alice, bob):
    with trio.fail_after(10):
        assert (await alice.http.post("/flows", json={"name": "team"})).status_code == 201
        mb = await post(bob, "team", "bob's")
        ma = await post(alice, "team", "alice's")
        # bob is not the owner: he may not delete alice's
        assert_error(await delete(bob, "team", ma["id"]), 403, "forbidden")
        r = await delete(alice, "team", mb["id"])
        assert r.status_code == 200, r.text
        assert r.json()["user"] == "alice" and r.json()["message"] == mb["id"]
        # but the owner may not edit it
        mb2 = await post(bob, "team", "bob's second")
        assert_error(await edit(alice, "team", mb2["id"], "owned"), 403, "forbidden")
        states = {m["id"]: m for m in (await bob.history("team"))["messages"]}
        assert states[mb["id"]]["deleted"] is True and states[mb["id"]]["content"] == ""
        assert states[ma["id"]]["deleted"] is False
        assert states[mb2["id"]]["content"] == "bob's second"


# -- typing and presence -------------------------------------------------------------


async def test_typing(server, anon, alice, bob):
    with trio.fail_after(10):
        async with sse_stream(bob, ["general"]) as sse:
            assert (await sse.next())["type"] == "ready"
            r = await alice.http.post("/flows/general/typing")
            assert r.status_code == 204, r.text
            assert r.content == b""
            got = await sse.until(lambda o: o["type"] == "typing")
            assert got == {"type": "typing", "flow": "general", "user": "alice"}
            # a second one within the second is dropped silently (still 204); the
            # message posted after it arrives next, with no typing in between
            assert (await alice.http.post("/flows/general/typing")).status_code == 204
            m = await post(alice, "general", "typed")
            assert await sse.next() == m
        assert_error(await alice.http.post("/flows/nope/typing"), 404, "not_found")
        await new_flow(server, "secret", private=True, owner="bob")
        assert_error(await alice.http.post("/flows/secret/typing"), 403, "forbidden")
        r = await anon.http.request("POST", "/flows/general/typing")
        assert_error(r, 401, "unauthorized")


async def test_presence(server, anon, alice, bob):
    with trio.fail_after(10):
        r = await alice.http.get("/flows/general/presence")
        assert r.status_code == 200
        assert r.json() == {"users": []}
        async with sse_stream(alice, ["general"]) as sse:
            assert (await sse.next())["type"] == "ready"
            r = await bob.http.get("/flows/general/presence")
            assert r.json() == {"users": ["alice"]}
        assert_error(await alice.http.get("/flows/nope/presence"), 404, "not_found")
        await new_flow(server, "secret", private=True, owner="bob")
        assert_error(await alice.http.get("/flows/secret/presence"), 403, "forbidden")
        r = await anon.http.request("GET", "/flows/general/presence")
        assert_error(r, 401, "unauthorized")


# -- metrics --------------------------------------------------------------------------


def metric(text: str, name: str) -> str:
    """The value of the sample `name` (labels included, if any) in a /metrics page."""
    [value] = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(name + " ")]
    return value


async def test_a_stalled_event_loop_shows_in_the_metrics(server, anon):
    """The server runs in this test's Trio loop: blocking it is a stall the server saw."""
    with trio.fail_after(10):
        time.sleep(0.03)  # not synchronisation: the stall being measured
        await trio.sleep(0)  # a look at the network ends the loop's turn
        text = (await anon.http.request("GET", "/metrics")).text
        assert float(metric(text, "rt_loop_stall_max_seconds")) >= 0.03
        assert float(metric(text, 'rt_loop_stall_seconds_bucket{le="0.025"}')) < float(
            metric(text, "rt_loop_stall_seconds_count")
        )


async def test_metrics_from_loopback(server, anon, alice):
    with trio.fail_after(10):
        await post(alice, "general", "one")
        await post(alice, "general", "two")
        async with sse_stream(alice, ["general"]) as sse:
            assert (await sse.next())["type"] == "ready"
            r = await anon.http.request("GET", "/metrics")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("text/plain")
            text = r.text
            for name in (
                "rt_streams_open",
                "rt_events_stored",
                "rt_op_latency_seconds",
                "rt_streams_opened",
                "rt_takeovers",
            ):
                assert f"# TYPE {name}" in text, name
            assert 'rt_streams_open{transport="sse"} 1.0' in text
            assert "rt_events_stored_total 2.0" in text
            assert 'rt_op_latency_seconds_count{op="message"} 2.0' in text
        # no labels by user, flow or client
        assert "alice" not in text and "general" not in text
        # the writer's batches (two posts, however they were batched) and the loop's turns
        assert "rt_writer_batch_ops_sum 2.0" in text
        assert float(metric(text, "rt_loop_stall_seconds_count")) > 0
        assert float(metric(text, "rt_store_hold_seconds_count")) >= 1  # the memory store
        for header in ({"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}):
            r = await anon.http.request("GET", "/metrics", headers=header)
            assert_error(r, 403, "forbidden")


async def test_metrics_token():
    with trio.fail_after(10):
        async with serve_rt(metrics_token="m") as server:
            anon = anonymous(server)
            try:
                assert_error(await anon.http.get("/metrics"), 401, "unauthorized")
                for wrong in ("Bearer x", "Bearer mm", "Basic m", "m", "Bearer"):
                    r = await anon.http.get("/metrics", headers={"Authorization": wrong})
                    assert_error(r, 401, "unauthorized")
                r = await anon.http.get("/metrics", headers={"Authorization": "Bearer m"})
                assert r.status_code == 200
                assert "rt_events_stored" in r.text
                # with a token, a client behind a proxy may read them
                r = await anon.http.get(
                    "/metrics", headers={"Authorization": "Bearer m", "X-Forwarded-For": "10.0.0.1"}
                )
                assert r.status_code == 200
            finally:
                await anon.aclose()


# -- rate limits and draining ------------------------------------------------------------


async def test_ops_rate_limit():
    with trio.fail_after(10):
        async with serve_rt(ops_rate=1, ops_burst=2) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            bob = await new_user(server, "bob")
            try:
                first = await post(alice, "general", "1")
                await post(alice, "general", "2")
                r = await alice.post("general", "3")
                assert_error(r, 429, "rate_limited")
                assert retry_after(r) == 1
                assert server.service.feed.head == 2
                # a retry of a used uuid is not rate limited
                r = await alice.post("general", "1", first["uuid"])
                assert r.status_code == 200, r.text
                assert r.json() == first
                # nor is another user
                await post(bob, "general", "bob")
                # typing counts as an op
                assert_error(await alice.http.post("/flows/general/typing"), 429, "rate_limited")
            finally:
                await alice.aclose()
                await bob.aclose()


async def test_retry_does_not_consume_the_rate_limit():
    with trio.fail_after(10):
        async with serve_rt(ops_rate=0.001, ops_burst=2) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            try:
                first = await post(alice, "general", "1")
                for _ in range(3):
                    r = await alice.post("general", "1", first["uuid"])
                    assert r.status_code == 200 and r.json() == first
                await post(alice, "general", "2")  # the retries left the second token
                assert_error(await alice.post("general", "3"), 429, "rate_limited")
            finally:
                await alice.aclose()


async def test_rate_limited_op_consumes_no_uuid():
    with trio.fail_after(10):
        async with serve_rt(ops_rate=10, ops_burst=1) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            try:
                await post(alice, "general", "1")
                uid = uuid()
                r = await alice.post("general", "2", uid)
                assert_error(r, 429, "rate_limited")
                await trio.sleep(0.15)  # time must pass for the bucket to refill
                r = await alice.post("general", "2", uid)
                assert r.status_code == 201, r.text
            finally:
                await alice.aclose()


async def test_draining_answers_503(server, alice):
    with trio.fail_after(10):
        m = await post(alice, "general")
        server.service.begin_shutdown()
        for method, path, kwargs in (
            ("GET", "/health", {}),
            ("GET", "/info", {}),
            ("GET", "/flows", {}),
            ("GET", "/flows/general/messages", {}),
            ("POST", "/flows/general/messages", {"json": {"content": "x", "uuid": uuid()}}),
            ("POST", "/flows/general/messages", {"json": {"content": "hello", "uuid": m["uuid"]}}),
            ("DELETE", f"/flows/general/messages/{m['id']}", {"params": {"uuid": uuid()}}),
            ("POST", "/auth/ticket", {"json": {"client": client_id()}}),
            ("GET", "/stream/sse", {"params": {"flows": "general", "client": client_id()}}),
        ):
            r = await alice.http.request(method, path, **kwargs)
            assert_error(r, 503, "shutting_down")
            assert retry_after(r) >= 1
        assert server.service.feed.head == m["id"]


# -- grammar table -------------------------------------------------------------------------


async def test_grammar_table(server, alice):
    with trio.fail_after(15):
        m = await post(alice, "general", "target")
        mid = m["id"]
        msgs = "/flows/general/messages"
        one = f"{msgs}/{mid}"

        def raw(text: str) -> bytes:
            return text.encode()

        U = '"uuid":"abcdefgh"'
        cases: list[tuple[str, str, Any, int, str]] = [
            # raw JSON bodies, sent as bytes
            ("POST", msgs, raw('{"content":"\\ud800",' + U + "}"), 400, "bad_request"),
            ("POST", msgs, raw('{"content":"a\\udc00b",' + U + "}"), 400, "bad_request"),
            ("POST", msgs, raw('{"content":"a\\u0000b",' + U + "}"), 400, "bad_request"),
            ("POST", msgs, b'{"content":"\xff\xfe",' + raw(U) + b"}", 400, "bad_request"),
            ("POST", msgs, b'{"content":"\xed\xa0\x80",' + raw(U) + b"}", 400, "bad_request"),
            ("PATCH", one, raw('{"content":"\\ud800x",' + U + "}"), 400, "bad_request"),
            ("POST", f"{one}/tags", raw('{"add":["\\ud800"],' + U + "}"), 400, "bad_request"),
            ("POST", msgs, b"", 400, "bad_request"),
            ("POST", msgs, b"not json", 400, "bad_request"),
            ("POST", msgs, b'{"content":"x",', 400, "bad_request"),
            ("POST", msgs, b"[]", 400, "bad_request"),
            ("POST", msgs, b'"a string"', 400, "bad_request"),
            ("POST", msgs, b"42", 400, "bad_request"),
            ("POST", msgs, b"null", 400, "bad_request"),
            ("POST", msgs, b'[{"content":"x","uuid":"abcdefgh"}]', 400, "bad_request"),
            ("POST", "/flows", b"[]", 400, "bad_request"),
            ("POST", "/flows", b"nope", 400, "bad_request"),
            ("POST", "/auth/ticket", b"true", 400, "bad_request"),
            ("POST", "/auth/guest", b"{", 400, "bad_request"),
            ("PATCH", one, b"[]", 400, "bad_request"),
            ("POST", f"{one}/tags", b'"x"', 400, "bad_request"),
            ("POST", f"{one}/members", b"{}", 404, "not_found"),
            # content: NUL, invisible, wrong types, oversize
            ("POST", msgs, {"content": "a\x00b", "uuid": uuid()}, 400, "bad_request"),
            ("POST", msgs, {"content": "", "uuid": uuid()}, 400, "bad_request"),
            ("POST", msgs, {"content": " \t\n\u3000", "uuid": uuid()}, 400, "bad_request"),
            (
                "POST",
                msgs,
                {"content": "\u200b\u200d\u2060\ufeff", "uuid": uuid()},
                400,
                "bad_request",
            ),
            ("POST", msgs, {"content": "\u202e\u2066", "uuid": uuid()}, 400, "bad_request"),
            ("POST", msgs, {"content": 5, "uuid": uuid()}, 400, "bad_request"),
            ("POST", msgs, {"content": None, "uuid": uuid()}, 400, "bad_request"),
            ("POST", msgs, {"content": ["x"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", msgs, {"content": {"x": 1}, "uuid": uuid()}, 400, "bad_request"),
            ("POST", msgs, {"content": True, "uuid": uuid()}, 400, "bad_request"),
            ("POST", msgs, {"content": "x" * 16385, "uuid": uuid()}, 413, "too_large"),
            ("PATCH", one, {"content": "x" * 16385, "uuid": uuid()}, 413, "too_large"),
            ("PATCH", one, {"content": 7, "uuid": uuid()}, 400, "bad_request"),
            ("PATCH", one, {"content": "a\x00", "uuid": uuid()}, 400, "bad_request"),
            # uuid: wrong types and grammar
            ("POST", msgs, {"content": "x", "uuid": 12345678}, 400, "bad_request"),
            ("POST", msgs, {"content": "x", "uuid": True}, 400, "bad_request"),
            ("POST", msgs, {"content": "x", "uuid": ["abcdefgh"]}, 400, "bad_request"),
            ("POST", msgs, {"content": "x", "uuid": "abcdefg"}, 400, "bad_request"),
            ("POST", msgs, {"content": "x", "uuid": "abcdefgh!"}, 400, "bad_request"),
            ("POST", msgs, {"content": "x", "uuid": "x" * 65}, 400, "bad_request"),
            ("POST", msgs, {"content": "x", "uuid": "abcdéfgh"}, 400, "bad_request"),
            ("PATCH", one, {"content": "x", "uuid": 1}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["x"], "uuid": None}, 400, "bad_request"),
            # tags: wrong types, zero-width, bidi, controls, separators
            ("POST", f"{one}/tags", {"add": "x", "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": {"x": 1}, "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"remove": "x", "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": [1], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": [None], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": [["x"]], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"remove": [True], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": [], "remove": [], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"uuid": uuid()}, 400, "bad_request"),
            (
                "POST",
                f"{one}/tags",
                {"add": ["zero\u200bwidth"], "uuid": uuid()},
                400,
                "bad_request",
            ),
            ("POST", f"{one}/tags", {"add": ["\u200c"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["\ufeffbom"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["bidi\u202e"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["\u200fx"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["\u2067x\u2069"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["nul\x00"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["bell\x07"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["a\u3000b"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["a\u2029b"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["\x85"], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": [" "], "uuid": uuid()}, 400, "bad_request"),
            ("POST", f"{one}/tags", {"add": ["x" * 65], "uuid": uuid()}, 400, "bad_request"),
            (
                "POST",
                f"{one}/tags",
                {"add": [str(i) for i in range(33)], "uuid": uuid()},
                400,
                "bad_request",
            ),
            # flows: name and private
            ("POST", "/flows", {"name": 5}, 400, "bad_request"),
            ("POST", "/flows", {"name": None}, 400, "bad_request"),
            ("POST", "/flows", {"name": ["a"]}, 400, "bad_request"),
            ("POST", "/flows", {}, 400, "bad_request"),
            ("POST", "/flows", {"name": "ok\u200b"}, 400, "bad_request"),
            ("POST", "/flows", {"name": "ok", "private": "true"}, 400, "bad_request"),
            ("POST", "/flows", {"name": "ok", "private": 0}, 400, "bad_request"),
            ("POST", "/flows", {"name": "ok", "private": None}, 400, "bad_request"),
            ("POST", "/flows", {"name": "ok", "private": []}, 400, "bad_request"),
            # path parts
            ("POST", "/flows/Nope/messages", {"content": "x", "uuid": uuid()}, 400, "bad_request"),
            ("PATCH", f"{msgs}/x1", {"content": "x", "uuid": uuid()}, 400, "bad_request"),
            (
                "PATCH",
                f"{msgs}/99999999999999999999",
                {"content": "x", "uuid": uuid()},
                400,
                "bad_request",
            ),
        ]
        for method, path, body, status, code in cases:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = await alice.http.request(method, path, **kwargs)
            try:
                assert_error(r, status, code)
            except AssertionError as exc:
                raise AssertionError(f"{method} {path} {body!r}: {exc}") from None
        # nothing of that was stored
        assert server.service.feed.head == mid
        assert server.service.directory.flow("ok") is None
        state = (await alice.history("general"))["messages"][0]
        assert state["content"] == "target" and state["tags"] == []


async def test_grammar_accepts_what_it_should(server, alice):
    with trio.fail_after(10):
        # visible characters next to invisible ones, astral characters, RTL text
        for content in (
            "\u200bx",
            "a\u202eb",
            "\U0001f600",
            "\u05e9\u05dc\u05d5\u05dd",
            "  padded  ",
            "line\nbreak",
            "\u2028x",
        ):
            r = await alice.post("general", content)
            assert r.status_code == 201, (content, r.text)
            assert r.json()["content"] == content
        m = await post(alice, "general", "tag")
        r = await tag(alice, "general", m["id"], add=["\U0001f600", "日本", "a-b_c", "#x"])
        assert r.status_code == 200, r.text
        assert r.json()["tags"] == sorted(["\U0001f600", "日本", "a-b_c", "#x"])
        r = await alice.http.post("/flows", json={"name": "0-a_b", "private": False})
        assert r.status_code == 201, r.text


# -- idempotency under concurrency -------------------------------------------------------------


async def test_concurrent_retries_store_once(server, alice, bob):
    with trio.fail_after(15):
        uid = uuid()
        results: list[httpx.Response] = []
        bob_result: list[httpx.Response] = []

        # one client, ten pooled connections: the requests really are in flight together
        async def send() -> None:
            results.append(await alice.post("general", "once", uid))

        async def send_bob() -> None:
            bob_result.append(await bob.post("general", "bob's"))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(send)
            nursery.start_soon(send_bob)
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] * 9 + [201], [r.text for r in results]
        bodies = [r.json() for r in results]
        assert all(b == bodies[0] for b in bodies)
        assert bodies[0]["content"] == "once" and bodies[0]["uuid"] == uid
        assert bob_result[0].status_code == 201, bob_result[0].text
        assert bob_result[0].json()["id"] != bodies[0]["id"]
        page = await alice.history("general")
        contents = sorted(m["content"] for m in page["messages"])
        assert contents == ["bob's", "once"]
        assert_error(await alice.post("general", "not once", uid), 409, "uuid_mismatch")


async def test_concurrent_mismatch(server, alice):
    with trio.fail_after(10):
        uid = uuid()
        results: list[httpx.Response] = []

        async def send(content: str) -> None:
            results.append(await alice.post("general", content, uid))

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(send, "a" if i % 2 else "b")
        stored = (await alice.history("general"))["messages"]
        assert len(stored) == 1
        winner = stored[0]["content"]
        for r in results:
            if r.status_code in (200, 201):
                body = r.json()
                assert body["content"] == winner and body["id"] == stored[0]["id"]
            else:
                assert_error(r, 409, "uuid_mismatch")
        assert [r.status_code for r in results].count(201) == 1
        assert sum(r.status_code == 409 for r in results) == 3


# -- CORS ---------------------------------------------------------------------------------------


async def test_cors():
    with trio.fail_after(10):
        async with serve_rt(allow_origin=("https://app.example",)) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            anon = anonymous(server)
            try:
                allowed = {"Origin": "https://app.example"}
                r = await alice.http.get("/flows/general/messages", headers=allowed)
                assert r.status_code == 200
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
                assert "Retry-After" in r.headers["Access-Control-Expose-Headers"]
                assert "Origin" in r.headers.get_list("Vary") or "Origin" in r.headers["Vary"]
                # errors carry it too, so the page can read them
                r = await anon.http.request("GET", "/me", headers=allowed)
                assert_error(r, 401, "unauthorized")
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
                # the preflight
                r = await anon.http.request(
                    "OPTIONS",
                    "/flows/general/messages",
                    headers={
                        **allowed,
                        "Access-Control-Request-Method": "POST",
                        "Access-Control-Request-Headers": "authorization, content-type",
                    },
                )
                assert r.status_code in (200, 204), r.text
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
                assert int(r.headers["Access-Control-Max-Age"]) > 0
                methods = {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")}
                assert {"GET", "POST", "PATCH", "DELETE"} <= methods
                headers = {
                    h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")
                }
                assert {"authorization", "content-type", "last-event-id"} <= headers
                # a foreign origin gets nothing
                foreign = {"Origin": "https://evil.example"}
                for origin in (
                    foreign,
                    {"Origin": "https://app.example.evil"},
                    {"Origin": "http://app.example"},
                    {"Origin": "null"},
                ):
                    r = await alice.http.get("/flows/general/messages", headers=origin)
                    assert "Access-Control-Allow-Origin" not in r.headers, origin
                    r = await anon.http.request(
                        "OPTIONS",
                        "/flows/general/messages",
                        headers={**origin, "Access-Control-Request-Method": "POST"},
                    )
                    assert "Access-Control-Allow-Origin" not in r.headers, origin
                    assert "Access-Control-Allow-Methods" not in r.headers, origin
                # streams follow the same policy
                async with sse_stream(alice, ["general"], headers=allowed) as sse:
                    assert (
                        sse.response.headers["Access-Control-Allow-Origin"] == "https://app.example"
                    )
                    assert (await sse.next())["type"] == "ready"
                async with sse_stream(
                    alice, ["general"], headers={"Origin": "https://evil.example"}
                ) as sse:
                    assert "Access-Control-Allow-Origin" not in sse.response.headers
                # the server's own origin is always allowed
                own = {"Origin": server.url}
                r = await alice.http.get("/flows/general/messages", headers=own)
                assert r.headers["Access-Control-Allow-Origin"] == server.url
            finally:
                await alice.aclose()
                await anon.aclose()


async def test_cors_default_allows_no_foreign_origin(server, alice):
    with trio.fail_after(10):
        r = await alice.http.get(
            "/flows/general/messages", headers={"Origin": "https://app.example"}
        )
        assert r.status_code == 200
        assert "Access-Control-Allow-Origin" not in r.headers
        r = await alice.http.get("/flows/general/messages", headers={"Origin": server.url})
        assert r.headers["Access-Control-Allow-Origin"] == server.url
