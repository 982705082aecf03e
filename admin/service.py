"""``meter admin``: serve the admin API until SIGTERM or SIGINT (``meter.web_service``).

On the way out the cleanup contexts run: the sync loop is cancelled, Redis and
Postgres are closed.
"""

from __future__ import annotations

import logging

from admin.app import create_app
from meter.settings import Settings
from meter.web_service import serve

log = logging.getLogger("admin.service")


def main(settings: Settings) -> None:
    """Run blocking; raises ``ConfigError`` (naming the variable) on unusable settings."""
    app = create_app(settings)  # refuses an empty METER_ADMIN_TOKEN before anything starts
    serve(
        app, settings, log=log, what="admin API", host=settings.admin_host, port=settings.admin_port
    )
