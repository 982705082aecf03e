"""Serve one aiohttp app until SIGTERM or SIGINT: what ``meter admin`` and ``meter portal`` run.

aiohttp's runner turns either signal into a graceful exit: stop accepting, let
in-flight requests finish (up to METER_SHUTDOWN_GRACE seconds), then run the
app's cleanup contexts.
"""

from __future__ import annotations

import logging

import uvloop
from aiohttp import web

from meter.logs import setup_logging
from meter.settings import Settings


def serve(
    app: web.Application,
    settings: Settings,
    *,
    log: logging.Logger,
    what: str,
    host: str,
    port: int,
) -> None:
    """Run blocking; logs "<what> listening" once the socket is bound, "<what> stopped" after."""
    setup_logging(settings.log_level)

    def listening(banner: str) -> None:  # aiohttp calls this once the socket is bound
        log.info(f"{what} listening", extra={"host": host, "port": port})

    web.run_app(
        app,
        host=host,
        port=port,
        shutdown_timeout=settings.shutdown_grace,
        access_log=None,
        print=listening,
        handle_signals=True,
        loop=uvloop.new_event_loop(),
    )
    log.info(f"{what} stopped")
