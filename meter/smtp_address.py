"""Where and how mail is handed over: ``METER_SMTP_URL`` read into a typed address.

::

    smtp://[user:password@]host[:port]           plain SMTP, port 25
    smtp+starttls://[user:password@]host[:port]  STARTTLS required, port 587
    smtps://[user:password@]host[:port]          TLS from the first byte, port 465

The user and password are percent-decoded (``%40`` for ``@``). TLS checks the server's
certificate against the system's CAs and its name. Pure: ``notifications.smtp`` sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

Security = Literal["plain", "starttls", "tls"]
SCHEMES: dict[str, tuple[Security, int]] = {
    "smtp": ("plain", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}


@dataclass(frozen=True, slots=True)
class SmtpAddress:
    host: str
    port: int
    security: Security = "plain"
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> SmtpAddress:
        """ValueError says what in ``url`` cannot be used (never its password)."""
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError("must be an smtp://, smtp+starttls:// or smtps:// URL")
        security, default_port = SCHEMES[scheme]
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the port must be a number from 1 to 65535") from None
        if port == 0:
            raise ValueError("the port must be a number from 1 to 65535")
        if not parts.hostname:
            raise ValueError("needs a host: smtp://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("takes no path, query or fragment: smtp://[user:pass@]host[:port]")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if (username is None) != (password is None):
            raise ValueError("credentials need both a user and a password (user:pass@host)")
        return cls(parts.hostname, port or default_port, security, username, password)
