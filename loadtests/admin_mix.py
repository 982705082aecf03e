"""The admin benchmark's requests: one class per route, and the client that sends them.

Which request a class sends for its i-th call is a pure function (``request``): the
account is the i-th of the provisioned ones in turn, the bodies of a class cycle
through a few fixed ones, and a credit's idempotency key is new for every call. So
two admin APIs given the same ``accounts`` and ``tag`` get the same requests, and
their databases stay alike round after round.

Only what the admin API answers today is sent: no ``If-Match``; only the status is
checked, so headers an API adds to its answers change nothing here.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

# class -> the status every request of it must get; the report keeps this order.
EXPECTED = {
    "get_account": 200,
    "get_balance": 200,
    "put_limits": 200,
    "post_credit": 201,
    "get_transactions": 200,
    "bad_input": 422,
}
CLASSES = tuple(EXPECTED)
TRANSACTIONS_PAGE = 20  # provisioning gives every account more entries than this

VALID_LIMITS: tuple[dict[str, Any], ...] = (
    {"overage_line": 1_000_000, "daily_hard_limit": 50_000_000, "daily_notify_threshold": 20_000},
    {
        "overage_line": 0,
        "daily_hard_limit": None,
        "daily_notify_threshold": None,
        "low_balance_threshold": 500_000,
    },
    {
        "overage_line": 2_000_000,
        "daily_hard_limit": 10_000_000,
        "daily_notify_threshold": None,
        "low_balance_threshold": None,
    },
)
# Each is wrong in at least two ways that no reading of the rules lets through
# (a required field missing, a negative amount, an unknown field, text for a number).
BAD_LIMITS: tuple[dict[str, Any], ...] = (
    {"overage_line": -1, "daily_notify_threshold": None},
    {"overage_line": "lots", "daily_hard_limit": -5, "daily_notify_threshold": None, "x": 1},
)
BAD_CREDITS: tuple[dict[str, Any], ...] = (
    {"amount": -100, "idempotency_key": "bad"},
    {"amount": "ten", "description": "bad", "idempotency_key": "bad", "colour": "red"},
)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: bytes | None


def request(kind: str, i: int, accounts: Sequence[str], tag: str) -> Request:
    """The ``i``-th request of class ``kind``; ``tag`` makes credits' keys unique per phase."""
    account = accounts[i % len(accounts)]
    base = f"/v1/accounts/{account}"
    if kind == "get_account":
        return Request("GET", base, None)
    if kind == "get_balance":
        return Request("GET", f"{base}/balance", None)
    if kind == "put_limits":
        return Request("PUT", f"{base}/limits", orjson.dumps(VALID_LIMITS[i % len(VALID_LIMITS)]))
    if kind == "post_credit":
        credit = {
            "amount": 1_000 + i % 7,
            "description": "admin bench credit",
            "idempotency_key": f"{tag}-{i}",
            **({"kind": "grant"} if i % 2 else {}),
        }
        return Request("POST", f"{base}/credits", orjson.dumps(credit))
    if kind == "get_transactions":
        return Request("GET", f"{base}/transactions?limit={TRANSACTIONS_PAGE}", None)
    if kind == "bad_input":
        if i % 2:
            return Request("POST", f"{base}/credits", orjson.dumps(BAD_CREDITS[i // 2 % 2]))
        return Request("PUT", f"{base}/limits", orjson.dumps(BAD_LIMITS[i // 2 % 2]))
    raise ValueError(f"unknown request class {kind!r}")


@dataclass
class Sent:
    """What the client saw of one slice of a phase."""

    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    surprises: list[str] = field(default_factory=list)  # the first few unexpected answers


def session(token: str, concurrency: int) -> aiohttp.ClientSession:
    """One keep-alive connection per concurrent caller, the bootstrap token on each call."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, force_close=False),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def send(
    client: aiohttp.ClientSession,
    base_url: str,
    requests: Sequence[Request],
    expected: int,
    concurrency: int,
) -> Sent:
    """Every request, ``concurrency`` at a time, each answer read whole."""
    sent = Sent()
    queue = iter(requests)

    async def caller() -> None:
        for r in queue:  # shared: each caller takes the next request not yet sent
            started = time.perf_counter()
            async with client.request(r.method, base_url + r.path, data=r.body) as response:
                body = await response.read()
            sent.latencies_s.append(time.perf_counter() - started)
            sent.statuses[response.status] += 1
            if response.status != expected and len(sent.surprises) < 5:
                sent.surprises.append(f"{r.method} {r.path}: {response.status} {body[:300]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(min(concurrency, len(requests)))))
    sent.wall_s = time.perf_counter() - started
    return sent


async def provision(
    client: aiohttp.ClientSession, base_url: str, accounts: int, entries: int
) -> list[str]:
    """``accounts`` accounts, each with a project, limits and ``entries`` credits (so a
    page of transactions is always full); their ids."""

    async def call(method: str, path: str, body: dict[str, Any], status: int) -> Any:
        async with client.request(method, base_url + path, data=orjson.dumps(body)) as response:
            answer = await response.read()
            if response.status != status:
                raise RuntimeError(f"{method} {path}: {response.status} {answer[:300]!r}")
            return orjson.loads(answer)

    ids = []
    for n in range(accounts):
        new = {"name": f"Bench {n}", "billing_email": f"billing{n}@bench.test"}
        account = (await call("POST", "/v1/accounts", new, 201))["id"]
        await call("POST", f"/v1/accounts/{account}/projects", {"name": "bench"}, 201)
        await call("PUT", f"/v1/accounts/{account}/limits", VALID_LIMITS[0], 200)
        for e in range(entries):
            credit = {"amount": 10_000_000, "description": "seed", "idempotency_key": f"seed-{e}"}
            await call("POST", f"/v1/accounts/{account}/credits", credit, 201)
        ids.append(account)
    return ids


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (``fraction`` of 1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil, at least the first
    return ordered[min(len(ordered), int(rank)) - 1]


def chunks(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts as even as can be (the first ones larger)."""
    return [total // parts + (k < total % parts) for k in range(parts)]
