"""Real servers for the tests: one Redis and one PostgreSQL per test session.

Each test gets an empty Redis database (FLUSHALL before it) and its own
Postgres database cloned from a migrated template, so tests never see each
other's data. Servers run on random free ports with data in a temp folder.
Without the programs the suite needs (``make test`` installs them first), the
session stops at once with the line saying what to install. The browser tests'
fixtures (a chromium per test, its pages) are in browser.py and the Stripe test
double's in stripe_fixtures.py, both loaded here as plugins.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import pytest
import redis as redis_sync
import trustme

from meter import local_servers, system_needs
from meter.live_state import LiveState
from meter.migrate import migrate

pytest_plugins = ("browser", "stripe_fixtures", "payments_support", "mail_support")

TEMPLATE_DB = "meter_template"
_db_counter = itertools.count()


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = system_needs.check("test")
    if missing:
        pytest.exit(missing, returncode=pytest.ExitCode.USAGE_ERROR)


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


@dataclass(frozen=True)
class TlsRedis:
    """A Redis serving TLS (and plain TCP, for the test's own checks), with the CA that
    signed its certificate and a client certificate from the same CA."""

    server: local_servers.RedisServer
    tls_port: int
    ca: Path
    client_cert: Path
    client_key: Path

    def url(self, **query: str) -> str:
        """``rediss://`` trusting our CA, plus ``query`` (redis-py's URL parameters)."""
        params = urlencode({"ssl_ca_certs": str(self.ca), **query})
        return f"rediss://localhost:{self.tls_port}/0?{params}"


@pytest.fixture(scope="session")
def tls_redis_server(server_dir: Path) -> Iterator[TlsRedis]:
    """TLS on its own port; clients may present a certificate (``tls-auth-clients
    optional``), which a test can make required with CONFIG SET."""
    folder = server_dir / "redis-tls"
    folder.mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("meter-gateway")
    for name, pem in [
        ("ca.pem", ca.cert_pem),
        ("server.pem", cert.cert_chain_pems[0]),
        ("server.key", cert.private_key_pem),
        ("client.pem", client.cert_chain_pems[0]),
        ("client.key", client.private_key_pem),
    ]:
        pem.write_to_path(str(folder / name))
    tls_port = local_servers.free_port()
    tls = [
        ("--tls-port", str(tls_port)),
        ("--tls-cert-file", str(folder / "server.pem")),
        ("--tls-key-file", str(folder / "server.key")),
        ("--tls-ca-cert-file", str(folder / "ca.pem")),
        ("--tls-auth-clients", "optional"),
    ]
    server = local_servers.start_redis(folder / "data", extra=[a for pair in tls for a in pair])
    yield TlsRedis(
        server, tls_port, folder / "ca.pem", folder / "client.pem", folder / "client.key"
    )
    server.stop(kill=True)


@pytest.fixture
def tls_redis(tls_redis_server: TlsRedis) -> TlsRedis:
    """The TLS Redis, emptied, clients' certificates optional again."""
    client = redis_sync.Redis.from_url(tls_redis_server.server.url)
    client.flushall()
    client.script_flush()
    client.config_set("tls-auth-clients", "optional")
    client.close()
    return tls_redis_server


@pytest.fixture(scope="session")
def postgres_server(server_dir: Path) -> Iterator[local_servers.PostgresServer]:
    server = local_servers.start_postgres(server_dir / "postgres")

    async def prepare() -> None:
        await server.execute(f"create database {TEMPLATE_DB}")
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
    await postgres_server.execute(f"create database {name} template {TEMPLATE_DB}")
    yield postgres_server.url(name)
    await postgres_server.execute(f"drop database if exists {name} with (force)")


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
