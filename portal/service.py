"""``meter portal``: serve the billing portal until SIGTERM or SIGINT (drained gracefully)."""

from __future__ import annotations

import logging

import uvloop
from aiohttp import web

from meter.logs import setup_logging
from meter.settings import Settings
from portal.app import create_app

log = logging.getLogger("portal.service")


def main(settings: Settings) -> None:
    app = create_app(settings)
    setup_logging(settings.log_level)

    def listening(banner: str) -> None:
        log.info(
            "billing portal listening",
            extra={"host": settings.portal_host, "port": settings.portal_port},
        )

    web.run_app(
        app,
        host=settings.portal_host,
        port=settings.portal_port,
        shutdown_timeout=settings.shutdown_grace,
        access_log=None,
        print=listening,
        handle_signals=True,
        loop=uvloop.new_event_loop(),
    )
    log.info("billing portal stopped")
