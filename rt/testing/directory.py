"""`DirectoryChecks`: the directory's conformance checks (rt/store/contracts.py).

Subclass it with `directory(tmp_path)` returning an unopened `Directory`.
"""

from __future__ import annotations

import pytest
import trio

from rt.core.errors import RtError


class DirectoryChecks:
    def directory(self, tmp_path):
        raise NotImplementedError

    @pytest.fixture
    async def store(self, tmp_path):
        async with self.directory(tmp_path) as d:
            yield d

    async def test_users_and_tokens(self, store):
        with trio.fail_after(10):
            token = await store.create_user("dana")
            assert token and store.authenticate(token) == "dana"
            assert store.user_exists("dana") and not store.user_exists("erin")
            assert store.authenticate("rt_nope") is None
            with pytest.raises(RtError) as err:
                await store.create_user("dana")
            assert err.value.code == "exists" and err.value.status == 409
            second = await store.add_token("dana")
            assert second != token and store.authenticate(second) == "dana"
            assert store.authenticate(token) == "dana"
            guest = await store.create_user("erin", guest=True)
            users = await store.list_users()
            assert [(u.name, u.guest) for u in users] == [("dana", False), ("erin", True)]
            assert all(isinstance(u.created, int) for u in users)
            await store.revoke_tokens("dana")
            assert store.authenticate(token) is None and store.authenticate(second) is None
            assert store.authenticate(guest) == "erin" and store.user_exists("dana")
            third = await store.add_token("dana")
            assert store.authenticate(third) == "dana"
            for call in (store.add_token, store.revoke_tokens):
                with pytest.raises(RtError) as err:
                    await call("nobody")
                assert err.value.code == "not_found"

    async def test_flows_and_members(self, store):
        with trio.fail_after(10):
            for name in ("owner", "m1", "m2"):
                await store.create_user(name)
            assert store.flow("club") is None
            club = await store.create_flow("club", private=True, owner="owner", members=["m1"])
            assert club.private and club.owner == "owner"
            assert club.members == {"owner", "m1"}
            assert store.flow("club") == club
            assert club.readable_by("m1") and not club.readable_by("m2")
            with pytest.raises(RtError) as err:
                await store.create_flow("club")
            assert err.value.code == "exists"
            for kw in ({"owner": "ghost"}, {"members": ["ghost"]}):
                with pytest.raises(RtError) as err:
                    await store.create_flow("haunted", **kw)
                assert err.value.code == "not_found"
            assert store.flow("haunted") is None
            open_ = await store.create_flow("open")
            assert not open_.private and open_.owner is None and open_.members == frozenset()
            assert [f.name for f in store.flows()] == ["club", "open"]

            await store.add_member("club", "m2")
            await store.add_member("club", "m2")  # already a member: fine
            assert store.flow("club").members == {"owner", "m1", "m2"}
            await store.remove_member("club", "m1")
            await store.remove_member("club", "m1")
            assert store.flow("club").members == {"owner", "m2"}
            assert store.flow("club").owner == "owner" and store.flow("club").private
            with pytest.raises(RtError) as err:
                await store.add_member("club", "ghost")
            assert err.value.code == "not_found"
            for call in (store.add_member, store.remove_member):
                with pytest.raises(RtError) as err:
                    await call("nowhere", "m1")
                assert err.value.code == "not_found"
