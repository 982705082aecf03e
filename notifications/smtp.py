"""Handing one message to the SMTP server: aiosmtplib, its errors sorted into retry or not.

``send`` either returns (the server took the message for every recipient) or raises
``MailFailed``, the one error of this module::

    MailFailed(permanent=True)    a 5xx reply: the server refused, sending again
                                  will not help (unknown mailbox, policy, auth)
    MailFailed(permanent=False)   a 4xx reply, a refused or lost connection, a
                                  TLS failure, no answer within the timeout: try later

The message goes as composed: its ``From`` is the envelope sender, its ``To`` the
recipients. ``tls_context`` is the seam for a private CA (the tests' trustme one).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from email.message import EmailMessage
from typing import Any

import aiosmtplib

from meter.settings import Settings
from meter.smtp_address import SmtpAddress

__all__ = ["TIMEOUT", "MailFailed", "SmtpAddress", "address_of", "failure", "send"]

TIMEOUT = 15.0  # seconds for the whole conversation, as for a webhook
CLOSE_WAIT = 2.0  # seconds a closed TLS connection gets to finish its shutdown


class _Client(aiosmtplib.SMTP):
    """Tells when its connection is gone. Closing a TLS connection only starts its
    shutdown; ``send`` waits for the end, so it returns with the socket closed rather
    than left to the garbage collector if the loop stops."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.closed_one = False  # close() was called on an open connection
        self.gone = asyncio.Event()  # and its connection_lost came

    def close(self) -> None:
        self.closed_one = self.closed_one or self.transport is not None
        super().close()

    def _on_connection_lost(self, protocol: Any) -> None:
        self.gone.set()
        super()._on_connection_lost(protocol)


class MailFailed(Exception):
    def __init__(self, permanent: bool, detail: str, code: int | None = None) -> None:
        super().__init__(detail)
        self.permanent = permanent
        self.detail = detail
        self.code = code  # the SMTP reply code, when the server gave one


def address_of(settings: Settings) -> SmtpAddress | None:
    """Where ``METER_SMTP_URL`` says to send; None: mail is not configured."""
    url = settings.smtp_url.reveal()
    return SmtpAddress.from_url(url) if url else None


async def send(
    address: SmtpAddress,
    message: EmailMessage,
    *,
    tls_context: ssl.SSLContext | None = None,
) -> None:
    # One client, closed whatever happens: aiosmtplib.send left the socket of a failed
    # TLS handshake to the garbage collector.
    client = _Client(
        hostname=address.host,
        port=address.port,
        username=address.username,
        password=address.password,
        use_tls=address.security == "tls",
        # plain means plain: aiosmtplib would otherwise upgrade when offered
        start_tls=address.security == "starttls",
        tls_context=tls_context,
        timeout=TIMEOUT,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            await client.connect()
            refused, _ = await client.send_message(message)
            await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:  # ssl.SSLError: OSError
        if isinstance(exc, aiosmtplib.SMTPResponseException) and client.is_connected:
            # A refusal leaves the session sound: end it with QUIT, so the server closes
            # its side too rather than holding the socket until it notices.
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                async with asyncio.timeout(TIMEOUT):
                    await client.quit()
        raise failure(exc) from exc
    finally:
        client.close()  # quit(), or connect() failing, closed it already
        if client.closed_one:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    await client.gone.wait()
    if refused:  # some recipients taken, these not: the message did not reach them
        raise failure(
            aiosmtplib.SMTPRecipientsRefused(
                [
                    aiosmtplib.SMTPRecipientRefused(r.code, r.message, to)
                    for to, r in refused.items()
                ]
            )
        )


def failure(exc: Exception) -> MailFailed:
    """What an error of aiosmtplib or of the network means for the sender."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        permanent = bool(codes) and all(500 <= c < 600 for c in codes)
        return MailFailed(permanent, detail or "every recipient refused", min(codes, default=None))
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return MailFailed(500 <= exc.code < 600, f"{exc.code} {exc.message}".strip(), exc.code)
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts are TimeoutErrors too
        return MailFailed(False, "the SMTP server did not answer in time")
    # Refused or lost connections (OSError), TLS failures, STARTTLS not offered, ...
    return MailFailed(False, f"{type(exc).__name__}: {exc}")
