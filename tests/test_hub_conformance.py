"""The hub conformance checks (rt.testing.hub) on MemoryHub, then the publish-order test
of docs/architecture.md invariant 1: a hub that reorders the writer's batches makes
MemoryHub's assertion fire, loudly, out of a real log, feed and writer.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

from rt.core.errors import RtError
from rt.core.events import Event
from rt.core.ops import post_op
from rt.hub import MemoryHub
from rt.testing.hub import HubChecks, ev, ids, sub_all
from rt.testing.storage import memory_storage


class TestMemoryHub(HubChecks):
    def make_hub(self) -> MemoryHub:
        return MemoryHub()


# -- invariant 1 through a real store: a reordering hub must make it fire ----------


class ReorderingHub(MemoryHub):
    """A broken hub for tests: holds back each batch and publishes it after the next."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Event] | None = None
        self.fired: list[AssertionError] = []

    def publish(self, events: list[Event]) -> None:
        held, self.held = self.held, list(events)
        if held is None:
            return
        current, self.held = self.held, None
        super().publish(current)
        try:
            super().publish(held)
        except AssertionError as exc:
            self.fired.append(exc)
            raise


def _post(i: int) -> Any:
    return post_op("alice", "general", {"content": f"post {i}", "uuid": f"uuid-{i:04d}"})


async def test_reordering_hub_makes_invariant_1_fire() -> None:
    hub = ReorderingHub()
    sub = sub_all(hub, ["general"])
    results = []
    with trio.fail_after(10):
        with pytest.RaisesGroup(
            pytest.RaisesExc(
                AssertionError,
                match=r"hub got event id 1 after 2: the writer "
                r"published out of order.*invariant 1",
            ),
            flatten_subgroups=True,
        ):
            async with memory_storage() as store:
                store.publish = hub.publish
                await store.create_user("alice")
                await store.create_flow("general")
                # The first batch is held back (nothing fires yet)...
                results.append(await store.submit(_post(1)))
                # ...and the next one makes the writer publish 2 then 1: the hub's
                # assertion fires, the submitter is released with `internal`...
                with pytest.raises(RtError, match="failed to publish"):
                    await store.submit(_post(2))
                # ...and the writer's crash cancels the store's nursery, and this wait.
                await trio.sleep_forever()
                pytest.fail("the writer went on after publishing out of order")
    assert [r.status for r in results] == [201]
    assert len(hub.fired) == 1
    # The in-order part of the broken publish reached the subscriber; the
    # out-of-order event did not.
    assert ids(sub.take_all()) == [2]


async def test_positive_control_in_order_hub_sees_every_post() -> None:
    hub = MemoryHub()
    sub = sub_all(hub, ["general"])
    with trio.fail_after(10):
        async with memory_storage() as store:
            store.publish = hub.publish
            await store.create_user("alice")
            await store.create_flow("general")
            results = [await store.submit(_post(i)) for i in range(1, 6)]
            # Concurrent submitters land in one or more batches: still in order.
            async with trio.open_nursery() as nursery:
                for i in range(6, 16):
                    nursery.start_soon(store.submit, _post(i))
            assert store.head == 15
    got = sub.take_all()
    assert ids(got) == list(range(1, 16))
    assert [e.data["content"] for e in got[:5]] == [f"post {i}" for i in range(1, 6)]
    assert sorted(e.data["uuid"] for e in got) == sorted(f"uuid-{i:04d}" for i in range(1, 16))
    for result, event in zip(results, got, strict=False):
        assert result.event is event  # the stored Event object itself, encoded once
    assert hub.last_id == 15


def test_positive_control_reordering_hub_is_really_the_only_difference() -> None:
    """Without a second batch, the ReorderingHub publishes nothing at all (held)."""
    hub = ReorderingHub()
    sub = sub_all(hub, ["general"])
    hub.publish([ev(1, "general")])
    assert sub.take_all() == []
    with pytest.raises(AssertionError):
        hub.publish([ev(2, "general")])
    assert ids(sub.take_all()) == [2]


_SUBMITTER_SCRIPT = textwrap.dedent("""
    import trio
    from rt.core.ops import post_op
    from rt.hub import MemoryHub
    from rt.testing.storage import memory_storage

    class ReorderingHub(MemoryHub):
        held = None
        def publish(self, events):
            held, self.held = self.held, list(events)
            if held is not None:
                super().publish(self.held)
                super().publish(held)

    async def main():
        try:
            async with memory_storage() as store:
                store.publish = ReorderingHub().publish
                await store.create_user("alice")
                await store.create_flow("general")
                for i in (1, 2):
                    await store.submit(post_op("alice", "general",
                                               {"content": "x", "uuid": f"uuid-{i:04d}"}))
        except BaseException as exc:
            print("ENDED", repr(exc))
            return
        print("NO ERROR")

    trio.run(main)
""")


def test_submitter_is_released_when_the_writer_crashes() -> None:
    """The crash must be loud: the submitter of the crashing batch must not hang."""
    root = Path(__file__).resolve().parents[1]
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _SUBMITTER_SCRIPT],
            cwd=root,
            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=5,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("submit() hung after the writer crashed on an out-of-order publish")
    assert proc.returncode == 0, proc.stderr
    assert "ENDED" in proc.stdout and "AssertionError" in proc.stdout, proc.stdout
