"""Which headers cross the gateway, and the ones it adds. Pure: pairs in, pairs out.

To the upstream (request):

- removed: the hop-by-hop headers (Connection, Keep-Alive, Proxy-*, TE,
  Trailer, Transfer-Encoding, Upgrade, and every header Connection names);
  Host (the upstream's own is sent); Expect (the gateway answers
  100-continue itself); the API key (Authorization, X-API-Key); and every
  ``X-Meter-*`` header the client sent, because only the gateway sets those.
- ``X-Forwarded-For``: the client's address appended to any incoming list.
- ``X-Forwarded-Proto``, ``X-Forwarded-Host``: the scheme and Host the client
  used (incoming values replaced).
- ``X-Meter-Account``, ``X-Meter-Project``, ``X-Meter-Key-Id``: who pays;
  ``X-Meter-Route``: the price-table route the call was priced as.

To the client (response):

- removed: hop-by-hop and Connection-named headers, and whatever the upstream
  set of the gateway's own headers below.
- ``X-Meter-Charged``: micros charged for this call, after settlement (0 when
  refunded).
- ``X-Credits-Available``: micros the account may still spend (balance +
  overage line, capped by what is left of today's hard limit), as of this call.
- ``X-Daily-Limit-Remaining``: micros left of today's hard limit; absent when
  the account has none.

Refusals of an admitted call (413 while streaming, 500, 502, 504) and the
402 and 429 refusals carry the same three headers; other refusals carry none.
"""

from __future__ import annotations

from collections.abc import Iterable

from meter.live_state import Call

Pairs = list[tuple[str, str]]

CHARGED = "X-Meter-Charged"
CREDITS_AVAILABLE = "X-Credits-Available"
LIMIT_REMAINING = "X-Daily-Limit-Remaining"
ACCOUNT = "X-Meter-Account"
PROJECT = "X-Meter-Project"
KEY_ID = "X-Meter-Key-Id"
ROUTE = "X-Meter-Route"

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)  # and every "proxy-*" header
_NOT_TO_UPSTREAM = frozenset(
    {"host", "expect", "authorization", "x-api-key", "x-forwarded-proto", "x-forwarded-host"}
)
_NOT_TO_CLIENT = frozenset({CREDITS_AVAILABLE.lower(), LIMIT_REMAINING.lower()})


def connection_listed(pairs: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Lower-cased header names listed in Connection: hop-by-hop for this message only."""
    names: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(names)


def _hop(lower: str, listed: frozenset[str]) -> bool:
    return lower in HOP_BY_HOP or lower.startswith("proxy-") or lower in listed


def to_upstream(
    incoming: Iterable[tuple[str, str]],
    *,
    client_ip: str | None,
    proto: str,
    host: str | None,
    call: Call,
) -> Pairs:
    pairs = list(incoming)
    listed = connection_listed(pairs)
    out: Pairs = []
    forwarded_for: list[str] = []
    for name, value in pairs:
        lower = name.lower()
        if _hop(lower, listed) or lower in _NOT_TO_UPSTREAM or lower.startswith("x-meter-"):
            continue
        if lower == "x-forwarded-for":
            forwarded_for.append(value)
            continue
        out.append((name, value))
    if client_ip:
        forwarded_for.append(client_ip)
    if forwarded_for:
        out.append(("X-Forwarded-For", ", ".join(forwarded_for)))
    out.append(("X-Forwarded-Proto", proto))
    if host:
        out.append(("X-Forwarded-Host", host))
    out += [
        (ACCOUNT, call.account_id),
        (PROJECT, call.project_id),
        (KEY_ID, call.key_id),
        (ROUTE, call.route),
    ]
    return out


def to_client(upstream: Iterable[tuple[str, str]], metering: Pairs) -> Pairs:
    pairs = list(upstream)
    listed = connection_listed(pairs)
    out: Pairs = []
    for name, value in pairs:
        lower = name.lower()
        if _hop(lower, listed) or lower in _NOT_TO_CLIENT or lower.startswith("x-meter-"):
            continue
        out.append((name, value))
    out += metering
    return out


def metering(charged: int, available: int, limit_remaining: int | None) -> Pairs:
    out = [(CHARGED, str(charged)), (CREDITS_AVAILABLE, str(available))]
    if limit_remaining is not None:
        out.append((LIMIT_REMAINING, str(limit_remaining)))
    return out
