"""The Content-Security-Policy of the portal's pages: no scripts, except Stripe.js's.

Every page gets ``POLICY``: no script, frame or fetch at all. The pages that take a
card (``stripe_policy``) also allow our own ``payments.js``, Stripe.js from the
origin of ``stripe_js_url``, its frames from there, and its calls to the origin of
``stripe_api_base``; never inline script. Both origins come from the settings, so a
test double's stand-in is allowed exactly as Stripe is.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from meter.settings import Settings

POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Stripe's own 3-D Secure pages frame from hooks.stripe.com (Stripe's CSP guide); a
# double serves its challenge in the page, so only real Stripe's origin adds it.
_STRIPE_JS = "https://js.stripe.com"
_STRIPE_HOOKS = "https://hooks.stripe.com"


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


def origin(url: str) -> str:
    """``https://js.stripe.com/v3/`` -> ``https://js.stripe.com``; refuses what a policy
    could not hold (a space or ``;`` would write another directive)."""
    parts = urlsplit(url)
    found = f"{parts.scheme}://{parts.netloc}"
    if not _ORIGIN.fullmatch(found):
        raise ValueError(f"not an origin for a Content-Security-Policy: {found!r}")
    return found


def stripe_policy(settings: Settings) -> str:
    js, api = origin(settings.stripe_js_url), origin(settings.stripe_api_base)
    frames = f"{js} {_STRIPE_HOOKS}" if js == _STRIPE_JS else js
    return f"{POLICY}; script-src 'self' {js}; frame-src {frames}; connect-src {api}"
