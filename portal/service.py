"""``meter portal``: serve the billing portal until SIGTERM or SIGINT (``meter.web_service``)."""

from __future__ import annotations

import logging

from meter.settings import Settings
from meter.web_service import serve
from portal.app import create_app

log = logging.getLogger("portal.service")


def main(settings: Settings) -> None:
    serve(
        create_app(settings),
        settings,
        log=log,
        what="billing portal",
        host=settings.portal_host,
        port=settings.portal_port,
    )
