"""Real servers for the tests: one Redis and one PostgreSQL per test session.

Each test gets an empty Redis database (FLUSHALL before it) and its own
Postgres database cloned from a migrated template, so tests never see each
other's data. Servers run on random free ports with data in a temp folder.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis as redis_sync

from meter import local_servers
from meter.live_state import LiveState
from meter.migrate import migrate

TEMPLATE_DB = "meter_template"
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def server_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="meter-test-") as tmp:
        path = Path(tmp)
        os.chmod(path, 0o755)
        yield path


@pytest.fixture(scope="session")
def redis_server(server_dir: Path) -> Iterator[local_servers.RedisServer]:
    server = local_servers.start_redis(server_dir / "redis")
    yield server
    server.stop(kill=True)


@pytest.fixture(scope="session")
def postgres_server(server_dir: Path) -> Iterator[local_servers.PostgresServer]:
    server = local_servers.start_postgres(server_dir / "postgres")

    async def prepare() -> None:
        conn = await asyncpg.connect(server.url("postgres"))
        try:
            await conn.execute(f"create database {TEMPLATE_DB}")
        finally:
            await conn.close()
        await migrate(server.url(TEMPLATE_DB))

    asyncio.run(prepare())
    yield server
    server.stop(kill=True)


@pytest.fixture
def redis_url(redis_server: local_servers.RedisServer) -> str:
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushall()
    client.script_flush()
    client.close()
    return redis_server.url


@pytest.fixture
async def database_url(postgres_server: local_servers.PostgresServer) -> AsyncIterator[str]:
    """A fresh, migrated database for this test (cloned from the template)."""
    name = f"t_{os.getpid()}_{next(_db_counter)}"
    conn = await asyncpg.connect(postgres_server.url("postgres"))
    try:
        await conn.execute(f"create database {name} template {TEMPLATE_DB}")
    finally:
        await conn.close()
    yield postgres_server.url(name)
    conn = await asyncpg.connect(postgres_server.url("postgres"))
    try:
        await conn.execute(f"drop database if exists {name} with (force)")
    finally:
        await conn.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def live_state(redis_url: str) -> AsyncIterator[LiveState]:
    state = LiveState.from_url(redis_url)
    yield state
    await state.close()
