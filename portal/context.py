"""Typed keys of what ``create_app`` puts in the portal app and its requests."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from admin.services import Services
from meter.settings import Settings
from portal.viewer import Viewer

SETTINGS = web.AppKey("settings", Settings)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
SERVICES = web.AppKey("services", Services)  # opened and closed in cleanup_ctx

VIEWER = web.RequestKey("viewer", Viewer)  # who is signed in, set by portal.session
FORM: web.RequestKey[dict[str, str]] = web.RequestKey("form")  # a POST's fields, CSRF checked
# Set by a page that loads Stripe.js: its response gets portal.csp.stripe_policy.
STRIPE_JS: web.RequestKey[bool] = web.RequestKey("stripe_js")
