"""One webhook delivery: signed as Standard Webhooks says, sent only to a public address.

The SSRF guard acts at connect time. The URL is checked (http or https, no
credentials, a host); an IP literal is checked at once; a name is resolved by
``GuardedResolver``, which drops every address that is not public, and aiohttp
connects to exactly the addresses it returns, so a DNS answer that changed to
loopback after the endpoint was saved is refused, not reached. ``allow_private``
(``METER_WEBHOOK_ALLOW_PRIVATE``) admits private, loopback and link-local targets
for on-premises use; cloud metadata addresses stay refused.

Signing uses the ``standardwebhooks`` library: ``webhook-id`` (the same on every
retry), ``webhook-timestamp`` and ``webhook-signature`` (one ``v1,`` signature per
secret, space-separated, so a rotated secret and its successor both verify).
Redirects are not followed: a 3xx is a failure.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks import Webhook

TIMEOUT_SECONDS = 15.0
EXCERPT_BYTES = 1024
# Cloud instance metadata: never a webhook target, private targets allowed or not.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")


class TargetRefused(Exception):
    """The target is not one we send to (and nothing was sent)."""


def address_problem(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool
) -> str | None:
    """Why ``ip`` may not be a webhook target, or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_problem(ip.ipv4_mapped, allow_private)
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "a carrier-grade NAT address"
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "a private address"
    return None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook target before any lookup, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "must be http or https"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if not parts.hostname:
        return "has no host"
    return None


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses a webhook may be sent to."""

    def __init__(self, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self.allow_private = allow_private
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        kept, why = [], []
        for entry in found:
            problem = address_problem(ipaddress.ip_address(entry["host"]), self.allow_private)
            if problem is None:
                kept.append(entry)
            else:
                why.append(f"{entry['host']} is {problem}")
        if not kept:
            raise TargetRefused(f"{host} resolves to no public address ({'; '.join(why)})")
        return kept

    async def close(self) -> None:
        await self.inner.close()


def session(allow_private: bool, dns: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """A client for deliveries: the guard in its resolver (around ``dns``, the system's
    by default), no cookies, no proxy."""
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(allow_private, dns), use_dns_cache=False
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
    )


def signature(secrets: Sequence[str], msg_id: str, at: datetime, body: bytes) -> str:
    return " ".join(Webhook(s).sign(msg_id, at, body) for s in secrets)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one try gave, for the delivery log."""

    ok: bool
    status: int | None
    latency_ms: float
    error: str | None
    excerpt: str
    retry_after: float | None = None  # seconds, from a 429 or 503
    permanent: bool = False  # no retry can succeed (a mail server's 5xx)


def _retry_after(headers: Any) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


async def deliver(
    http: aiohttp.ClientSession,
    url: str,
    secrets: Sequence[str],
    msg_id: str,
    body: bytes,
    *,
    allow_private: bool,
    now: datetime | None = None,
) -> Attempt:
    """Send one signed POST; never raises for the target's faults."""
    started = time.monotonic()

    def took() -> float:
        return round((time.monotonic() - started) * 1000, 1)

    problem = url_problem(url)
    host = urlsplit(url).hostname or ""
    literal = _literal(host) if problem is None else None
    if literal is not None:
        why = address_problem(literal, allow_private)
        problem = f"{host} is {why}" if why else None
    if problem is not None:
        return Attempt(False, None, took(), f"target refused: {problem}", "")
    at = now or datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "meter-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature(secrets, msg_id, at, body),
    }
    try:
        async with http.post(url, data=body, headers=headers, allow_redirects=False) as r:
            excerpt = (await r.content.read(EXCERPT_BYTES)).decode("utf-8", "replace")
            ok = 200 <= r.status < 300
            error = None if ok else f"answered {r.status}"
            if 300 <= r.status < 400:
                error = f"answered {r.status} (redirects are not followed)"
            wait = _retry_after(r.headers) if r.status in (429, 503) else None
            return Attempt(ok, r.status, took(), error, excerpt, wait)
    except TargetRefused as exc:
        return Attempt(False, None, took(), f"target refused: {exc}", "")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Attempt(False, None, took(), f"{type(exc).__name__}: {exc}", "")
