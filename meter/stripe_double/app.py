"""The wiring: localstripe's app with the double's middlewares, routes and wrappers
(how it works: the package docstring)."""

from __future__ import annotations

import warnings

from aiohttp import web

with warnings.catch_warnings():
    # localstripe's sync handlers: aiohttp deprecates them, still runs them.
    warnings.filterwarnings("ignore", "Bare functions are deprecated", DeprecationWarning)
    from localstripe import resources, server

from meter.stripe_double import cards, checkout, control, events, search
from meter.stripe_double.control import DoubleState
from meter.stripe_double.errors import render_unexpected
from meter.stripe_double.idempotency import mark_endpoint


def create_app() -> web.Application:
    """localstripe's app, emptied and with the double's behaviour (once per process:
    the app and its store are localstripe's globals)."""
    app: web.Application = server.app
    if control.STATE in app:
        return app
    resources.store.dump_to_disk = lambda: None  # no /tmp/localstripe.pickle
    resources.store.clear()
    state = DoubleState()
    app[control.STATE] = state
    events.install()
    cards.install()
    search.install_list_by_customer()
    outer = [control.bypass, *state.api_middlewares(), render_unexpected]
    inner = [mark_endpoint, events.after_api_call, cards.shape_card_errors]
    for i, mw in enumerate(outer):
        app.middlewares.insert(i, mw)
    app.middlewares.extend(inner)
    control.add_routes(app)
    checkout.add_routes(app)
    search.add_routes(app)
    return app
