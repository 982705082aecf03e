"""Which headers cross the gateway, and the ones it adds. Pure: pairs in, pairs out.

Headers are ``(name, value)`` pairs of bytes, as the HTTP parsers hand them
over (httptools, aiohttp's ``raw_headers``) and as they go out on the wire:
measured, decoding a request's headers to ``str`` and encoding them back costs
~2 us per direction, more than the filtering itself.

To the upstream (request):

- removed: the hop-by-hop headers (Connection, Keep-Alive, Proxy-*, TE,
  Trailer, Transfer-Encoding, Upgrade, and every header Connection names);
  Content-Length (the upstream client frames the body); Host (the upstream's
  own is sent); Expect (the gateway answers 100-continue itself); the API key
  (Authorization, X-API-Key); and every ``X-Meter-*`` header the client sent,
  because only the gateway sets those.
- ``X-Forwarded-For``: the client's address appended to any incoming list.
- ``X-Forwarded-Proto``, ``X-Forwarded-Host``: the scheme and Host the client
  used (incoming values replaced).
- ``Accept-Encoding: identity`` (the client's replaced) for a route whose units
  are read from the response body, which the gateway cannot read compressed.
- ``X-Meter-Account``, ``X-Meter-Project``, ``X-Meter-Key-Id``: who pays;
  ``X-Meter-Route``: the price-table route the call was priced as.

To the client (response):

- removed: hop-by-hop and Connection-named headers; Content-Length (the server
  layer frames the body); Date and Server (the gateway sets its own, as nginx
  does); and whatever the upstream set of the gateway's own headers below.
- ``X-Meter-Charged``: micros charged for this call, after settlement (0 when
  refunded).
- ``X-Credits-Available``: micros the account may still spend (balance +
  overage line, capped by what is left of today's hard limit), as of this call.
- ``X-Daily-Limit-Remaining``: micros left of today's hard limit; absent when
  the account has none.

A call settled at the end of its body (units from a trailer or the body) also
carries ``X-Meter-Settlement``: ``trailer`` when the final three metering values
follow as trailers (the client sent ``TE: trailers``; declared in ``Trailer``),
``deferred`` when they do not follow (the head's values show the reserve). The
upstream's own trailers are not passed on.

Refusals of an admitted call (413 while streaming, 500, 502, 504) and the
402 and 429 refusals carry the same three headers; other refusals carry none.
"""

from __future__ import annotations

from collections.abc import Iterable

from meter.live_state import Call

Pairs = list[tuple[bytes, bytes]]

CHARGED = b"X-Meter-Charged"
CREDITS_AVAILABLE = b"X-Credits-Available"
LIMIT_REMAINING = b"X-Daily-Limit-Remaining"
ACCOUNT = b"X-Meter-Account"
PROJECT = b"X-Meter-Project"
KEY_ID = b"X-Meter-Key-Id"
ROUTE = b"X-Meter-Route"
SETTLEMENT = b"X-Meter-Settlement"
SETTLED_IN_TRAILER = [(SETTLEMENT, b"trailer")]
SETTLED_LATER = [(SETTLEMENT, b"deferred")]
TRAILER = b"Trailer"

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)  # and every "proxy-*" header
_DROPPED_PREFIXES = (b"proxy-", b"x-meter-")
_NOT_TO_UPSTREAM = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"authorization",
    b"x-api-key",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-for",
}
_NOT_TO_CLIENT = HOP_BY_HOP | {
    b"content-length",
    b"date",
    b"server",
    CREDITS_AVAILABLE.lower(),
    LIMIT_REMAINING.lower(),
}
_NONE: frozenset[bytes] = frozenset()


def connection_listed(pairs: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lower-cased header names listed in Connection: hop-by-hop for this message only."""
    names: set[bytes] | None = None
    for name, value in pairs:
        if len(name) == 10 and name.lower() == b"connection":
            names = names or set()
            names.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return _NONE if names is None else frozenset(names)


def call_headers(call: Call) -> Pairs:
    """Who pays and what for, as the upstream sees it (the same for every call of a key+route)."""
    return [
        (ACCOUNT, call.account_id.encode()),
        (PROJECT, call.project_id.encode()),
        (KEY_ID, call.key_id.encode()),
        (ROUTE, call.route.encode()),
    ]


def to_upstream(
    incoming: Pairs,
    *,
    client_ip: str | None,
    proto: bytes,
    call: Call,
    plain_body: bool = False,
) -> Pairs:
    """The request headers for the upstream, ending with ``call_headers(call)``;
    ``plain_body``: asking for an uncompressed response body.

    One pass; a second one only when a Connection header names more headers to drop.
    """
    out: Pairs = []
    forwarded_for: list[bytes] = []
    host: bytes | None = None
    connection = False
    for name, value in incoming:
        lower = name.lower()
        if lower in _NOT_TO_UPSTREAM:
            if lower == b"host":
                host = value
            elif lower == b"x-forwarded-for":
                forwarded_for.append(value)
            elif lower == b"connection":
                connection = True
            continue
        if lower.startswith(_DROPPED_PREFIXES):
            continue
        out.append((name, value))
    if connection:
        listed = connection_listed(incoming)
        out = _without_listed(out, listed)
        if b"x-forwarded-for" in listed:
            forwarded_for = []
    if client_ip:
        forwarded_for.append(client_ip.encode())
    if forwarded_for:
        out.append((b"X-Forwarded-For", b", ".join(forwarded_for)))
    out.append((b"X-Forwarded-Proto", proto))
    if host:
        out.append((b"X-Forwarded-Host", host))
    if plain_body:
        out = [(n, v) for n, v in out if n.lower() != b"accept-encoding"]
        out.append((b"Accept-Encoding", b"identity"))
    out += call_headers(call)
    return out


def to_client(upstream: Pairs, metering: Pairs) -> Pairs:
    out: Pairs = []
    connection = False
    for name, value in upstream:
        lower = name.lower()
        if lower in _NOT_TO_CLIENT:
            connection = connection or lower == b"connection"
            continue
        if lower.startswith(_DROPPED_PREFIXES):
            continue
        out.append((name, value))
    if connection:
        out = _without_listed(out, connection_listed(upstream))
    out += metering
    return out


def _without_listed(pairs: Pairs, listed: frozenset[bytes]) -> Pairs:
    return [(n, v) for n, v in pairs if n.lower() not in listed]


def metering(charged: int, available: int, limit_remaining: int | None) -> Pairs:
    out = [(CHARGED, b"%d" % charged), (CREDITS_AVAILABLE, b"%d" % available)]
    if limit_remaining is not None:
        out.append((LIMIT_REMAINING, b"%d" % limit_remaining))
    return out


def declare_trailers(trailers: Pairs) -> tuple[bytes, bytes]:
    """The ``Trailer`` header that announces these trailers."""
    return (TRAILER, b", ".join(name for name, _ in trailers))


def accepts_trailers(pairs: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's ``TE`` header lists ``trailers`` (RFC 9110 10.1.4)."""
    for name, value in pairs:
        if len(name) == 2 and name.lower() == b"te":
            for token in value.split(b","):
                if token.partition(b";")[0].strip().lower() == b"trailers":
                    return True
    return False


def find(pairs: Iterable[tuple[bytes, bytes]], lower_name: bytes) -> bytes | None:
    """The first value of a header (``lower_name`` lower-cased), or None."""
    for name, value in pairs:
        if len(name) == len(lower_name) and name.lower() == lower_name:
            return value
    return None


def encode(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``Name: value\\r\\n`` lines (no blank line), one join."""
    parts: list[bytes] = []
    for name, value in pairs:
        parts += (name, b": ", value, b"\r\n")
    return b"".join(parts)


def text(pairs: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Latin-1 decoded pairs (lossless both ways)."""
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in pairs]


def raw(pairs: Iterable[tuple[str, str]]) -> Pairs:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs]
