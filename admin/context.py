"""Typed keys of what ``create_app`` puts in the app and the request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
from aiohttp import web

from admin.access import Principal
from admin.audit import Actor
from admin.metrics import AdminMetrics
from admin.services import Services
from meter.live_state import LiveState
from meter.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", AdminMetrics)
# The injected clock (time.time in production): "today" of the usage view, the live balance's day.
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
# Opened and closed in create_app's cleanup_ctx:
POOL = web.AppKey("pool", asyncpg.Pool)
LIVE = web.AppKey("live", LiveState)
SERVICES = web.AppKey("services", Services)
# Set once the start-up sync pass has finished (repaired what it could, or failed).
FIRST_SYNC_DONE = web.AppKey("first_sync_done", asyncio.Event)

PRINCIPAL = web.RequestKey("principal", Principal)
ACTOR = web.RequestKey("actor", Actor)
