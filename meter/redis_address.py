"""Where and how the pipelined client (``redis_pipe.py``) connects to Redis: its URL read
once, the commands that open a connection, and TLS for ``rediss://``.

The URL forms are redis-py's, so one ``METER_REDIS_URL`` serves the gateway's pipe
and the services that use redis-py::

    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db][?ssl_ca_certs=...&ssl_certfile=...
        &ssl_keyfile=...&ssl_cert_reqs=required|optional|none&ssl_check_hostname=true|false]
    unix:///path/to/socket[?db=N]

``rediss://`` verifies the server's certificate against the system's CAs (or
``ssl_ca_certs``) and its name against the host, as redis-py does; a client
certificate (``ssl_certfile``, ``ssl_keyfile``) is sent when Redis asks for one
(``tls-auth-clients``). Other query parameters are redis-py's and ignored here.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

Arg = bytes | str | int

pack_command = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """``rediss://``: how to check the server, and the client's own certificate."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: str = "required"
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """A client context; ValueError names the file that cannot be used."""
        try:
            context = ssl.create_default_context(cafile=self.ca_certs)
        except (OSError, ssl.SSLError) as exc:  # SSLError: not a certificate
            raise ValueError(f"ssl_ca_certs={self.ca_certs}: {exc}") from exc
        context.check_hostname = self.check_hostname and self.cert_reqs == "required"
        context.verify_mode = _CERT_REQS[self.cert_reqs]
        if self.certfile:
            try:
                context.load_cert_chain(self.certfile, self.keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"ssl_certfile={self.certfile}, ssl_keyfile={self.keyfile}: {exc}"
                ) from exc
        return context


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where and how to connect (the module's docstring has the URL forms)."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsOptions | None = None  # rediss://

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """ValueError names what in ``url`` cannot be used."""
        parts = urlsplit(url)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        db_text = query.get("db", "")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// Redis URL needs a socket path")
            return cls(path=parts.path, db=int(db_text or 0), username=username, password=password)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(
                f"unsupported Redis URL scheme {parts.scheme!r} (redis://, rediss:// or unix://)"
            )
        db_path = parts.path.strip("/")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(db_path or db_text or 0),
            username=username,
            password=password,
            tls=_tls_options(query) if parts.scheme == "rediss" else None,
        )

    def __str__(self) -> str:
        where = f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"
        return f"{'tls:' if self.tls else ''}{where}/{self.db}"

    def handshake(self) -> list[tuple[bytes, str]]:
        """The commands that open a connection's pipeline, each with what it is for."""
        commands: list[tuple[bytes, str]] = []
        if self.password is not None:
            auth: tuple[Arg, ...] = ("AUTH", self.password)
            if self.username:
                auth = ("AUTH", self.username, self.password)
            commands.append((pack_command(auth), "AUTH"))
        if self.db:
            commands.append((pack_command(("SELECT", self.db)), "SELECT"))
        return commands


def _tls_options(query: dict[str, str]) -> TlsOptions:
    cert_reqs = query.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs={cert_reqs!r}: one of none, optional, required")
    check = query.get("ssl_check_hostname", "true").lower()
    if check not in _BOOLS:
        raise ValueError(f"ssl_check_hostname={check!r}: true or false")
    return TlsOptions(
        ca_certs=query.get("ssl_ca_certs") or None,
        certfile=query.get("ssl_certfile") or None,
        keyfile=query.get("ssl_keyfile") or None,
        cert_reqs=cert_reqs,
        check_hostname=_BOOLS[check],
    )
