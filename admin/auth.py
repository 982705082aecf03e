"""Who is calling: ``Authorization: Bearer <token>`` -> a ``Principal`` with roles.

Today there is one token, the bootstrap operator token (``METER_ADMIN_TOKEN``),
and one role that may do everything. Later tokens and roles plug in here: the
``TokenAuthenticator`` maps more tokens to principals, and ``REQUIRED_ROLE``
names the role a route needs; handlers never look at tokens.

Tokens are compared in constant time against every known token, so timing
says nothing about how much of a guess was right or which token matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from admin.errors import Forbidden, Unauthorized
from meter.settings import Settings

# Routes anyone may call (probes, scrapes, the API description).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/openapi.json"})


class Role(StrEnum):
    OPERATOR = "operator"  # everything; the bootstrap token's role


# (method, route template) -> role it needs; anything else needs OPERATOR.
REQUIRED_ROLE: Mapping[tuple[str, str], Role] = {}


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: frozenset[Role]


class TokenAuthenticator:
    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self._tokens = [(token.encode(), principal) for token, principal in tokens.items() if token]

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuthenticator:
        bootstrap = Principal("bootstrap", frozenset({Role.OPERATOR}))
        return cls({settings.admin_token.reveal(): bootstrap})

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send Authorization: Bearer <admin token>")
        presented = token.strip().encode()
        found = None
        for candidate, principal in self._tokens:
            if hmac.compare_digest(presented, candidate):
                found = principal
        if found is None:
            raise Unauthorized("the admin token is not valid")
        return found


def authorize(principal: Principal, method: str, route: str) -> None:
    role = REQUIRED_ROLE.get((method, route), Role.OPERATOR)
    if role not in principal.roles and Role.OPERATOR not in principal.roles:
        raise Forbidden(f"{method} {route} needs the {role} role")
