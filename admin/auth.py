"""Who is calling: ``Authorization: Bearer <token>`` -> a ``Principal``.

The bootstrap operator token (``METER_ADMIN_TOKEN``) is compared in constant
time; every other token (operator or account tokens, ``mta_...``) is looked up
by its SHA-256, so a revoked one fails on the next request. What a principal
may do is ``admin.access``'s to decide, route by route.
"""

from __future__ import annotations

import hmac

from admin.access import BOOTSTRAP, Principal
from admin.errors import Unauthorized
from admin.people import People
from meter.settings import Settings

# Routes anyone may call (probes, scrapes, the API description).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/openapi.json"})


class TokenAuthenticator:
    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap.encode()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuthenticator:
        return cls(settings.admin_token.reveal())

    async def authenticate(self, authorization: str | None, people: People) -> Principal:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send Authorization: Bearer <admin token>")
        if self._bootstrap and hmac.compare_digest(token.encode(), self._bootstrap):
            return BOOTSTRAP
        principal = await people.principal_of(token)
        if principal is None:
            raise Unauthorized("the admin token is not valid")
        return principal
