import trio

from tests.helpers import sse_stream, uuid, ws_stream


async def test_post_and_receive_over_ws_and_sse(server, alice):
    with trio.fail_after(10):
        async with ws_stream(alice, ["general"]) as ws, sse_stream(alice, ["general"]) as sse:
            ready = await ws.next()
            assert ready["type"] == "ready"
            sready = await sse.next()
            assert sready["type"] == "ready"
            r = await alice.post("general", "hello <b>", uuid())
            assert r.status_code == 201, r.text
            event = r.json()
            got = await ws.until(lambda o: o.get("type") == "message")
            assert got == event
            got = await sse.until(lambda o: o.get("type") == "message")
            assert got == event
