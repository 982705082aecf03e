"""The portal's templates and stylesheet, wired onto an aiohttp app.

Autoescaping is on for every template, and an undefined variable is an error rather
than an empty string: a page rendered without its ``csrf_token`` fails loudly.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from portal.formatting import FILTERS

STATIC_DIR = Path(__file__).resolve().parent / "static"


def setup_templates(
    app: web.Application,
    *,
    static_url: str = "/static",
    extra: jinja2.BaseLoader | None = None,
) -> jinja2.Environment:
    """Templates from ``portal/templates`` (``extra`` first, for a test's own pages),
    the formatting filters, and ``portal/static`` served at ``static_url``."""
    package = jinja2.PackageLoader("portal", "templates")
    loader = jinja2.ChoiceLoader([extra, package]) if extra else package
    env = aiohttp_jinja2.setup(
        app,
        loader=loader,
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        filters=FILTERS,
    )
    app[aiohttp_jinja2.static_root_key] = static_url
    app.router.add_static(static_url, STATIC_DIR)
    return env
