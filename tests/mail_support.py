"""A real SMTP server on loopback for the tests: aiosmtpd, in a thread of its own.

``smtp_server(...)`` starts one (plain, STARTTLS required, or TLS from the first
byte, optionally asking for a login) and gives its ``Inbox``: every message it took,
parsed, and a way to wait for the n-th without sleeping.

    async def test_x(smtp_server: StartSmtp) -> None:
        server = smtp_server()
        ...send...
        (message,) = await server.inbox.wait_for(1)
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from meter.local_servers import free_port

WAIT_SECONDS = 10.0


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage
    raw: bytes


@dataclass
class Inbox:
    """What the server took, in order; ``refuse`` answers RCPT TO with that reply instead."""

    received: list[Received] = field(default_factory=list)
    refuse: str | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.refuse:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self._changed:
            self.received.append(
                Received(str(envelope.mail_from), list(envelope.rcpt_tos), parsed, raw)
            )
            self._changed.notify_all()
        return "250 OK"

    async def wait_for(self, count: int) -> list[EmailMessage]:
        """The first ``count`` messages, once that many have arrived (AssertionError if
        they do not within WAIT_SECONDS)."""

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: len(self.received) >= count, WAIT_SECONDS)

        arrived = await asyncio.to_thread(wait)
        assert arrived, f"{len(self.received)} messages arrived, not {count}"
        return [r.message for r in self.received[:count]]


@dataclass
class SmtpServer:
    port: int
    inbox: Inbox
    ca: trustme.CA | None  # the CA of its certificate, when it speaks TLS
    logins: list[tuple[str, str]]  # the (user, password) pairs it was given

    def client_context(self) -> ssl.SSLContext:
        assert self.ca is not None
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


class StartSmtp(Protocol):
    def __call__(
        self, *, tls: str | None = ..., login: tuple[str, str] | None = ...
    ) -> SmtpServer: ...


def _authenticator(
    wanted: tuple[str, str], seen: list[tuple[str, str]]
) -> Callable[..., AuthResult]:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        given = (data.login.decode(), data.password.decode())
        seen.append(given)
        # handled=False: aiosmtpd itself answers a failure (535)
        return AuthResult(success=given == wanted, handled=False)

    return check


@pytest.fixture
def smtp_server() -> Iterator[StartSmtp]:
    """``tls``: None (plain), "starttls" (required) or "tls" (implicit); ``login``: the
    only (user, password) it accepts, and then it takes no mail without one."""
    started: list[Controller] = []

    def start(*, tls: str | None = None, login: tuple[str, str] | None = None) -> SmtpServer:
        inbox = Inbox()
        port = free_port()
        ca = trustme.CA() if tls else None
        kwargs: dict[str, Any] = {}
        if ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            if tls == "starttls":
                kwargs.update(tls_context=context, require_starttls=True)
            else:
                kwargs.update(ssl_context=context)
        logins: list[tuple[str, str]] = []
        if login is not None:
            kwargs.update(
                authenticator=_authenticator(login, logins),
                auth_required=True,
                auth_require_tls=tls is not None,
            )
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return SmtpServer(port, inbox, ca, logins)

    yield start
    for controller in started:
        controller.stop()
