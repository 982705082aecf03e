"""``meter admin``: serve the admin API until SIGTERM or SIGINT.

aiohttp's runner turns either signal into a graceful exit: stop accepting,
let in-flight requests finish (up to METER_SHUTDOWN_GRACE seconds), then run
the cleanup contexts (sync loop cancelled, Redis and Postgres closed).
"""

from __future__ import annotations

import logging

import uvloop
from aiohttp import web

from admin.app import create_app
from meter.logs import setup_logging
from meter.settings import Settings

log = logging.getLogger("admin.service")


def main(settings: Settings) -> None:
    """Run blocking; raises ``ConfigError`` (naming the variable) on unusable settings."""
    app = create_app(settings)  # refuses an empty METER_ADMIN_TOKEN before anything starts
    setup_logging(settings.log_level)

    def listening(banner: str) -> None:  # aiohttp calls this once the socket is bound
        log.info(
            "admin API listening", extra={"host": settings.admin_host, "port": settings.admin_port}
        )

    web.run_app(
        app,
        host=settings.admin_host,
        port=settings.admin_port,
        shutdown_timeout=settings.shutdown_grace,
        access_log=None,
        print=listening,
        handle_signals=True,
        loop=uvloop.new_event_loop(),
    )
    log.info("admin API stopped")
