"""HTTP/1.1 for the raw server: response heads, pre-encoded where it pays, and the
one request rule llhttp leaves to its user (``host_count_valid``). Pure.

A response head is the status line (one cached bytes object per status), the
``Server``/``Date`` line pair (``DateLine``: rebuilt once a second, not per
response), the headers as given, the framing the server layer decides
(``Content-Length`` or ``Transfer-Encoding: chunked``), and ``Connection``
when it differs from the protocol version's default.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from gateway.headers import Pairs

SERVER = b"meter"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}


def status_line(status: int, reason: str = "") -> bytes:
    line = STATUS_LINES.get(status)
    if line is not None:
        return line
    phrase = reason.encode("latin-1", "replace") if reason else b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.replace(b"\r", b"").replace(b"\n", b""))


ONE_HOST = "an HTTP/1.1 request needs exactly one Host header (HTTP/1.0: at most one)"


def host_count_valid(hosts: int, http10: bool) -> bool:
    """RFC 9112 3.2: a server answers 400 to an HTTP/1.1 request without a Host header
    and to any request with more than one (aiohttp's parser refuses both itself)."""
    return hosts == 1 or (hosts == 0 and http10)


def only_h2c(upgrade: bytes) -> bool:
    """An Upgrade header that offers only h2c (HTTP/2 over cleartext), which a server may
    ignore (RFC 9113 3.1 and RFC 9110 7.8): any other protocol (WebSocket) is refused."""
    offers = {token.strip().lower() for token in upgrade.split(b",")}
    return offers == {b"h2c"}


def without_upgrade(request_line: bytes, headers: Pairs) -> bytes:
    """A request head again, without its Upgrade header (nor HTTP2-Settings): parsed as
    plain HTTP/1.1 (the Connection header's tokens for them are hop-by-hop anyway)."""
    parts = [request_line, b"\r\n"]
    for name, value in headers:
        if name.lower() not in (b"upgrade", b"http2-settings"):
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def body_allowed(status: int) -> bool:
    """1xx, 204 and 304 answers never have a body (RFC 9112 6.3)."""
    return status >= 200 and status != 204 and status != 304


class DateLine:
    """``Server: ...\\r\\nDate: <IMF-fixdate>\\r\\n`` for the current second."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""
        self.refresh()

    def refresh(self, now: float | None = None) -> None:
        second = int(time.time() if now is None else now)
        if second != self.second:
            self.second = second
            self.line = b"Server: %s\r\nDate: %s\r\n" % (
                SERVER,
                formatdate(second, usegmt=True).encode(),
            )


def head(
    status: int,
    reason: str,
    server_date: bytes,
    headers: Pairs,
    framing: bytes,
    connection: bytes,
) -> list[bytes]:
    """The head as parts for one ``b"".join`` (the caller may append the body first)."""
    parts = [status_line(status, reason), server_date]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (framing, connection, b"\r\n")
    return parts


def content_length(n: int) -> bytes:
    return b"Content-Length: %d\r\n" % n


CHUNKED = b"Transfer-Encoding: chunked\r\n"
CLOSE = b"Connection: close\r\n"
KEEP_ALIVE = b"Connection: keep-alive\r\n"  # only HTTP/1.0 clients need to be told
