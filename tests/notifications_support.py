"""Helpers of the notifications tests: a real webhook receiver on loopback that verifies
what it gets with the ``standardwebhooks`` library, and usage made through the admission
script (so the ledger worker's batches move the rollups as in production).

No fixtures live here; tests import what they use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks import Webhook

from meter.live_state import Call, LiveState
from meter.money import utc_day


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.body)
        return data

    def verifies_with(self, secret: str) -> bool:
        try:
            Webhook(secret).verify(self.body, self.headers)
        except Exception:  # the library's WebhookVerificationError and kin
            return False
        return True


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (then 200), or holds it."""

    url: str = ""
    got: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # sent with scripted answers
    hold: asyncio.Event | None = None  # set: answer; unset: keep the request waiting
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        got = Received({k.lower(): v for k, v in request.headers.items()}, await request.read())
        async with self.arrived:
            self.got.append(got)
            self.arrived.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        status = self.script.pop(0) if self.script else 200
        return web.Response(status=status, text=f"answer {status}", headers=self.headers)

    async def wait_count(self, n: int, seconds: float = 20.0) -> list[Received]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.got) >= n), seconds)
        return list(self.got)

    def of_type(self, type_: str) -> list[Received]:
        return [r for r in self.got if r.json["type"] == type_]


@asynccontextmanager
async def receiving(path: str = "/hooks") -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post(path, receiver.handle)

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound(path)

    app.router.add_post("/moved", moved)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}{path}"
    try:
        yield receiver
    finally:
        if receiver.hold is not None:
            receiver.hold.set()
        await runner.cleanup()


async def spend(
    live: LiveState, shard: int, account_id: str, price: int, day: int | None = None
) -> None:
    """One admitted call of ``price`` micros on ``day`` (today by default)."""
    admitted = await live.admit(
        Call(shard, account_id, "proj_x", "key_x", "chat", price),
        utc_day(time.time()) if day is None else day,
    )
    assert admitted.admitted, admitted
