"""Which Postgres failures are outages to ride out (the worker reconnects, the admin API 503s)."""

from __future__ import annotations

import asyncpg
import pytest

from meter.postgres_errors import UNAVAILABLE


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError,  # 57P03: the server is starting up
        asyncpg.exceptions.AdminShutdownError,  # 57P01: a restart or pg_terminate_backend
        asyncpg.exceptions.TooManyConnectionsError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        ConnectionRefusedError,
        TimeoutError,
    ],
)
def test_outages(error: type[Exception]) -> None:
    assert issubclass(error, UNAVAILABLE)


@pytest.mark.parametrize(
    "error",
    [asyncpg.exceptions.UniqueViolationError, asyncpg.exceptions.UndefinedTableError, ValueError],
)
def test_bugs_are_not_outages(error: type[Exception]) -> None:
    assert not issubclass(error, UNAVAILABLE)
