"""Tier 2: the security properties of PROTOCOL.md against a real in-process server.

Tokens never travel in URLs; tickets are bound to their client id, lapse,
and lose to an Authorization header; names cannot be stolen; only authors
(and flow owners) change messages; a non-member learns nothing of a private
flow; and no token or ticket ever reaches the server's log.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.helpers import Api, SseClient, client_id, new_flow, new_user, serve_rt, uuid

# Loggers of the in-process *clients* (httpx logs every URL it requests, ticket
# included): they are not the server's log output.
CLIENT_LOGGERS = ("httpx", "httpcore", "trio-websocket", "trio_websocket")


def assert_error(r: httpx.Response | tuple[int, Any], status: int, code: str) -> dict:
    if isinstance(r, httpx.Response):
        got_status, body = r.status_code, r.json()
    else:
        got_status, body = r
    assert got_status == status, (got_status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    return body


async def sse_open(
    http: httpx.AsyncClient, params: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    """One `/stream/sse` request: (200, its `ready`) or (status, error body). Closed after."""
    async with http.stream("GET", "/stream/sse", params=params, headers=headers or {}) as r:
        if r.status_code == 200:
            return 200, await SseClient(r).next()
        return r.status_code, json.loads(await r.aread())


async def ws_refused(
    server, params: dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> tuple[int, str]:
    """Open `/stream/ws`, expect it closed before `ready`: (close code, reason)."""
    url = f"{server.ws_url}/stream/ws?{httpx.QueryParams(params)}"
    async with open_websocket_url(url, extra_headers=headers or []) as conn:
        with pytest.raises(ConnectionClosed) as info:
            message = await conn.get_message()
            raise AssertionError(f"the stream was not refused: {message}")
    reason = info.value.reason
    return reason.code, reason.reason


async def ws_ready(
    server, params: dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> dict:
    url = f"{server.ws_url}/stream/ws?{httpx.QueryParams(params)}"
    async with open_websocket_url(url, extra_headers=headers or []) as conn:
        first = json.loads((await conn.get_message()).split("\n")[0])
    return first


def bearer(api: Api) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.token}"}


# -- tokens never in URLs ---------------------------------------------------------


async def test_tokens_are_never_accepted_in_urls(server, anon, alice):
    with trio.fail_after(10):
        client = client_id()
        base = {"flows": "general", "client": client}
        ticket = await alice.ticket(client)
        for name in ("token", "access_token"):
            # alone, with a valid ticket, and even beside a valid Authorization header
            for params, headers in (
                ({**base, name: alice.token}, None),
                ({**base, name: alice.token, "ticket": ticket}, None),
                ({**base, name: alice.token}, bearer(alice)),
                ({**base, name: ""}, bearer(alice)),
            ):
                r = await sse_open(anon.http, params, headers)
                body = assert_error(r, 400, "bad_request")
                assert alice.token not in json.dumps(body)
            code, reason = await ws_refused(server, {**base, name: alice.token})
            assert (code, reason) == (4400, "bad_request")
        # a bearer token is not a ticket
        assert_error(
            await sse_open(anon.http, {**base, "ticket": alice.token}), 401, "unauthorized"
        )
        # neither ticket nor header
        assert_error(await sse_open(anon.http, base), 401, "unauthorized")
        assert await ws_refused(server, base) == (4001, "unauthorized")
        # the HTTP API ignores tokens in the URL and in cookies
        for params in ({"token": alice.token}, {"access_token": alice.token}):
            assert_error(await anon.http.get("/me", params=params), 401, "unauthorized")
        r = await anon.http.get("/me", headers={"Cookie": f"token={alice.token}"})
        assert_error(r, 401, "unauthorized")
        # while the same token in the header works
        assert (await sse_open(anon.http, base, bearer(alice)))[0] == 200


# -- tickets ---------------------------------------------------------------------------


async def test_ticket_is_bound_to_its_client_id(server, anon, alice, bob):
    with trio.fail_after(10):
        mine, other = client_id(), client_id()
        ticket = await alice.ticket(mine)
        r = await sse_open(anon.http, {"flows": "general", "client": other, "ticket": ticket})
        assert_error(r, 401, "unauthorized")
        assert await ws_refused(
            server, {"flows": "general", "client": other, "ticket": ticket}
        ) == (4001, "unauthorized")
        # any number of times for its own client id
        for _ in range(2):
            status, ready = await sse_open(
                anon.http, {"flows": "general", "client": mine, "ticket": ticket}
            )
            assert status == 200 and ready["type"] == "ready" and ready["client"] == mine
        ready = await ws_ready(server, {"flows": "general", "client": mine, "ticket": ticket})
        assert ready["type"] == "ready" and ready["client"] == mine
        # a ticket is not a bearer token
        r = await anon.http.get("/me", headers={"Authorization": f"Bearer {ticket}"})
        assert_error(r, 401, "unauthorized")
        r = await anon.http.post(
            "/auth/ticket", json={"client": mine}, headers={"Authorization": f"Bearer {ticket}"}
        )
        assert_error(r, 401, "unauthorized")
        # made-up and mangled tickets
        for fake in ("tk_" + "A" * 32, ticket[:-1], ticket + "x", ticket.upper()):
            r = await sse_open(anon.http, {"flows": "general", "client": mine, "ticket": fake})
            assert_error(r, 401, "unauthorized")


async def test_tickets_lapse_after_their_ttl():
    ttl = 0.5
    with trio.fail_after(10):
        async with serve_rt(ticket_ttl=ttl) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            anon = Api(server)
            try:
                used_c, unused_c = client_id(), client_id()
                before = time.time() * 1000
                r = await alice.http.post("/auth/ticket", json={"client": unused_c})
                after = time.time() * 1000
                assert r.status_code == 200
                unused = r.json()
                assert before + ttl * 1000 - 50 <= unused["expires"] <= after + ttl * 1000 + 50
                used = await alice.ticket(used_c)

                async def stream(client: str, ticket: str) -> tuple[int, dict]:
                    return await sse_open(
                        anon.http, {"flows": "general", "client": client, "ticket": ticket}
                    )

                assert (await stream(used_c, used))[0] == 200
                await trio.sleep(ttl * 0.6)  # time must pass: 0.3 s
                assert (await stream(used_c, used))[0] == 200  # its use renewed it
                await trio.sleep(ttl * 0.6)  # 0.6 s since issue, 0.3 s since last use
                assert_error(await stream(unused_c, unused["ticket"]), 401, "unauthorized")
                assert (await stream(used_c, used))[0] == 200
                await trio.sleep(ttl + 0.1)  # just past the ttl since its last use
                assert_error(await stream(used_c, used), 401, "unauthorized")
                # and it stays dead: a lapsed ticket is not revived by a later request
                assert_error(await stream(used_c, used), 401, "unauthorized")
                # a fresh ticket works
                assert (await stream(used_c, await alice.ticket(used_c)))[0] == 200
            finally:
                await alice.aclose()
                await anon.aclose()


async def test_authorization_wins_over_ticket(server, anon, alice, bob):
    with trio.fail_after(10):
        await new_flow(server, "secret", private=True, owner="alice")
        client = client_id()
        ticket = await alice.ticket(client)
        params = {"flows": "secret", "client": client, "ticket": ticket}
        assert (await sse_open(anon.http, params))[0] == 200
        # a bad header is not rescued by a good ticket
        for header in ("Bearer rt_wrong", "Basic abc", "Bearer"):
            r = await sse_open(anon.http, params, {"Authorization": header})
            assert_error(r, 401, "unauthorized")
        assert await ws_refused(server, params, [("Authorization", "Bearer rt_wrong")]) == (
            4001,
            "unauthorized",
        )
        # bob's header with alice's ticket is bob, who may not read alice's private flow
        assert_error(await sse_open(anon.http, params, bearer(bob)), 403, "forbidden")
        assert await ws_refused(server, params, [("Authorization", f"Bearer {bob.token}")]) == (
            4003,
            "forbidden",
        )
        # a good header makes a bad ticket irrelevant
        status, ready = await sse_open(
            anon.http, {**params, "ticket": "tk_nonsense"}, bearer(alice)
        )
        assert status == 200 and ready["flows"] == ["secret"]


async def test_revoking_the_token_kills_its_tickets(server, anon, alice):
    with trio.fail_after(10):
        client = client_id()
        ticket = await alice.ticket(client)
        params = {"flows": "general", "client": client, "ticket": ticket}
        assert (await sse_open(anon.http, params))[0] == 200
        await server.service.directory.revoke_tokens("alice")
        assert_error(await sse_open(anon.http, params), 401, "unauthorized")
        assert_error(await alice.http.get("/me"), 401, "unauthorized")
        token = await server.service.directory.add_token("alice")
        r = await anon.http.post(
            "/auth/ticket", json={"client": client}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200
        assert (await sse_open(anon.http, {**params, "ticket": r.json()["ticket"]}))[0] == 200


# -- names and authorship ------------------------------------------------------------------


async def test_guest_cannot_take_a_registered_name(server, anon, alice):
    with trio.fail_after(10):
        r = await anon.http.post("/auth/guest", json={"name": "alice"})
        body = assert_error(r, 409, "exists")
        assert "token" not in json.dumps(body)
        r = await anon.http.post("/auth/guest", json={"name": "Alice"})  # no case aliasing
        assert_error(r, 400, "bad_request")
        assert (await alice.http.get("/me")).json()["user"] == "alice"
        r = await anon.http.post("/auth/guest", json={"name": "carol"})
        assert r.status_code == 201
        carol_token = r.json()["token"]
        r = await anon.http.post("/auth/guest", json={"name": "carol"})
        assert_error(r, 409, "exists")
        r = await anon.http.get("/me", headers={"Authorization": f"Bearer {carol_token}"})
        assert r.json()["user"] == "carol"


async def test_only_the_author_or_the_owner_changes_messages(server, alice, bob):
    with trio.fail_after(10):
        carol = await new_user(server, "carol")
        try:
            r = await alice.post("general", "alice's")
            m = r.json()
            # general has no owner: only the author deletes or edits
            r = await bob.http.delete(f"/flows/general/messages/{m['id']}", params={"uuid": uuid()})
            assert_error(r, 403, "forbidden")
            r = await bob.http.patch(
                f"/flows/general/messages/{m['id']}",
                json={"content": "bob was here", "uuid": uuid()},
            )
            assert_error(r, 403, "forbidden")
            state = (await alice.history("general"))["messages"][0]
            assert state["content"] == "alice's" and not state["deleted"] and not state["edited"]
            # in carol's flow, carol deletes anyone's message, and nobody else does
            assert (await carol.http.post("/flows", json={"name": "team"})).status_code == 201
            ma = (await alice.post("team", "alice's")).json()
            mb = (await bob.post("team", "bob's")).json()
            r = await bob.http.delete(f"/flows/team/messages/{ma['id']}", params={"uuid": uuid()})
            assert_error(r, 403, "forbidden")
            r = await carol.http.delete(f"/flows/team/messages/{mb['id']}", params={"uuid": uuid()})
            assert r.status_code == 200 and r.json()["type"] == "delete"
            states = {s["id"]: s for s in (await alice.history("team"))["messages"]}
            assert states[ma["id"]]["deleted"] is False
            assert states[mb["id"]]["deleted"] is True
        finally:
            await carol.aclose()


# -- private flows ------------------------------------------------------------------------------


async def test_non_member_learns_nothing_of_a_private_flow(server, anon, alice, bob):
    with trio.fail_after(10):
        assert (
            await alice.http.post("/flows", json={"name": "secret", "private": True})
        ).status_code == 201
        secret_uuid = uuid()
        r = await alice.post("secret", "the plan", secret_uuid)
        assert r.status_code == 201
        m = r.json()
        r = await alice.http.post(
            f"/flows/secret/messages/{m['id']}/tags", json={"add": ["classified"], "uuid": uuid()}
        )
        assert r.status_code == 200
        leaks = ("the plan", "classified", secret_uuid)

        def assert_no_leak(r: httpx.Response | tuple[int, Any]) -> None:
            text = r.text if isinstance(r, httpx.Response) else json.dumps(r[1])
            for leak in leaks:
                assert leak not in text, (leak, text)

        refusals = [
            await bob.http.get("/flows/secret/messages"),
            await bob.http.get("/flows/secret/messages", params={"tag": "classified"}),
            await bob.post("secret", "let me in"),
            await bob.post("secret", "the plan", secret_uuid),  # alice's uuid and content
            await bob.http.patch(
                f"/flows/secret/messages/{m['id']}", json={"content": "x", "uuid": uuid()}
            ),
            await bob.http.post(
                f"/flows/secret/messages/{m['id']}/tags", json={"add": ["x"], "uuid": uuid()}
            ),
            await bob.http.delete(f"/flows/secret/messages/{m['id']}", params={"uuid": uuid()}),
            await bob.http.post("/flows/secret/typing"),
            await bob.http.get("/flows/secret/presence"),
            await bob.http.post("/flows/secret/members", json={"user": "bob"}),
        ]
        for r in refusals:
            assert_error(r, 403, "forbidden")
            assert_no_leak(r)
        # its message ids are not reachable through an open flow either
        for r in (
            await bob.http.patch(
                f"/flows/general/messages/{m['id']}", json={"content": "x", "uuid": uuid()}
            ),
            await bob.http.post(
                f"/flows/general/messages/{m['id']}/tags", json={"add": ["x"], "uuid": uuid()}
            ),
            await bob.http.delete(f"/flows/general/messages/{m['id']}", params={"uuid": uuid()}),
        ):
            assert_error(r, 404, "not_found")
            assert_no_leak(r)
        # streams refuse before any byte of the flow
        client = client_id()
        ticket = await bob.ticket(client)
        for flows in ("secret", "general,secret"):
            r = await sse_open(anon.http, {"flows": flows, "client": client, "ticket": ticket})
            assert_error(r, 403, "forbidden")
            assert_no_leak(r)
            assert await ws_refused(
                server,
                {"flows": flows, "client": client},
                [("Authorization", f"Bearer {bob.token}")],
            ) == (4003, "forbidden")
        # not listed
        assert "secret" not in (await bob.http.get("/me")).json()["flows"]
        assert all(f["name"] != "secret" for f in (await bob.http.get("/flows")).json()["flows"])
        # bob's use of alice's uuid is his own op, and returns nothing of hers
        r = await bob.post("general", "mine", secret_uuid)
        assert r.status_code == 201 and r.json()["content"] == "mine"
        # nothing changed
        state = (await alice.history("secret"))["messages"]
        assert len(state) == 1
        assert state[0]["content"] == "the plan" and state[0]["tags"] == ["classified"]


async def test_removed_member_is_cut_off_at_once(server, alice, bob):
    with trio.fail_after(10):
        assert (
            await alice.http.post("/flows", json={"name": "secret", "private": True})
        ).status_code == 201
        r = await alice.http.post("/flows/secret/members", json={"user": "bob"})
        assert r.status_code == 204
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            client = client_id()
            params = {"flows": "secret", "client": client, "ticket": await bob.ticket(client)}
            async with http.stream("GET", "/stream/sse", params=params) as resp:
                assert resp.status_code == 200
                sse = SseClient(resp)
                assert (await sse.next())["type"] == "ready"
                assert (await alice.http.delete("/flows/secret/members/bob")).status_code == 204
                r = await alice.post("secret", "after bob left")
                assert r.status_code == 201
                seen = []
                with pytest.raises(EOFError):
                    while True:
                        seen.append(await sse.next())
        assert {"type": "close", "reason": "unauthorized"} in seen, seen
        assert all(o.get("content") != "after bob left" for o in seen), seen
        assert_error(await bob.http.get("/flows/secret/messages"), 403, "forbidden")


# -- logs -------------------------------------------------------------------------------------


async def test_no_token_or_ticket_in_the_server_log(caplog):
    caplog.set_level(logging.DEBUG)
    for name in (
        "rt",
        "rt.access",
        "hypercorn.error",
        "hypercorn.access",
        "quart.app",
        "quart.serving",
    ):
        caplog.set_level(logging.DEBUG, logger=name)
    secrets: list[str] = []
    with trio.fail_after(15):
        async with serve_rt() as server:
            # records of loggers that do not propagate reach caplog too
            hooked = []
            for logger in list(logging.root.manager.loggerDict.values()):
                if isinstance(logger, logging.Logger) and not logger.propagate:
                    logger.addHandler(caplog.handler)
                    hooked.append(logger)
            try:
                await new_flow(server, "general")
                anon = Api(server)
                alice = await new_user(server, "alice")
                secrets.append(alice.token)
                try:
                    r = await anon.http.post("/auth/guest", json={"name": "guest1"})
                    assert r.status_code == 201
                    guest = Api(server, r.json()["token"])
                    secrets.append(guest.token)
                    try:
                        await exercise(server, anon, alice, guest, secrets)
                    finally:
                        await guest.aclose()
                finally:
                    await anon.aclose()
                    await alice.aclose()
            finally:
                for logger in hooked:
                    logger.removeHandler(caplog.handler)
    assert len(set(secrets)) == 5  # two tokens, three tickets
    records = [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]
    # the capture works: rt's access log saw the requests, ticketed streams included
    messages = [r.getMessage() for r in records]
    assert "POST /auth/guest 201" in messages, messages
    assert "POST /auth/ticket 200" in messages, messages
    assert "GET /stream/sse 200" in messages, messages
    assert "GET /stream/sse 400" in messages, messages
    assert "GET /stream/sse 401" in messages, messages
    for record in records:
        texts = [
            record.getMessage(),
            repr(record.args),
            record.exc_text or "",
            caplog.handler.format(record),
        ]
        for secret in secrets:
            for text in texts:
                assert secret not in text, (record.name, text)


async def exercise(server, anon: Api, alice: Api, guest: Api, secrets: list[str]) -> None:
    """Requests that carry secrets in every place a client might put one."""
    for api in (alice, guest):
        client = client_id()
        ticket = await api.ticket(client)
        secrets.append(ticket)
        base = {"flows": "general", "client": client}
        assert (await sse_open(anon.http, {**base, "ticket": ticket}))[0] == 200
        ready = await ws_ready(server, {**base, "ticket": ticket})
        assert ready["type"] == "ready"
        assert_error(
            await sse_open(anon.http, {**base, "client": client_id(), "ticket": ticket}),
            401,
            "unauthorized",
        )
        assert_error(await sse_open(anon.http, {**base, "token": api.token}), 400, "bad_request")
        assert_error(
            await sse_open(anon.http, {**base, "access_token": api.token}), 400, "bad_request"
        )
        assert_error(await sse_open(anon.http, {**base, "ticket": api.token}), 401, "unauthorized")
        assert await ws_refused(server, {**base, "token": api.token}) == (4400, "bad_request")
        assert await ws_refused(server, {**base, "ticket": ticket, "client": client_id()}) == (
            4001,
            "unauthorized",
        )
        # secrets in bodies, headers and paths of bad requests
        r = await api.http.post("/auth/ticket", json={"client": api.token + "!"})
        assert_error(r, 400, "bad_request")
        r = await anon.http.post("/auth/guest", json={"name": ticket})
        assert_error(r, 400, "bad_request")
        r = await anon.http.get("/me", headers={"Authorization": f"Bearer {api.token}x"})
        assert_error(r, 401, "unauthorized")
        r = await anon.http.get("/me", headers={"Authorization": f"Bearer {ticket}"})
        assert_error(r, 401, "unauthorized")
        r = await api.http.post("/flows/general/messages", content=api.token.encode())
        assert_error(r, 400, "bad_request")
        r = await api.http.get("/flows/general/messages", params={"tag": ticket, "limit": ticket})
        assert_error(r, 400, "bad_request")
        # a ticket in a stream parameter that is echoed in errors
        assert_error(
            await sse_open(
                anon.http, {"flows": "general", "client": ticket + "!", "ticket": ticket}
            ),
            400,
            "bad_request",
        )
    # revoked: the ticket of a revoked token
    client = client_id()
    ticket = await guest.ticket(client)
    secrets.append(ticket)
    await server.service.directory.revoke_tokens("guest1")
    assert_error(
        await sse_open(anon.http, {"flows": "general", "client": client, "ticket": ticket}),
        401,
        "unauthorized",
    )
