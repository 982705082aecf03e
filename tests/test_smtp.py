"""SMTP: METER_SMTP_URL read into an address, and messages handed to a real aiosmtpd.

The URL table is pure. Sending goes through aiosmtplib to an aiosmtpd server on
loopback: plain, STARTTLS (a trustme certificate) and TLS from the first byte, with
and without a login; its refusals and a port nobody listens on are sorted into
permanent and transient failures.
"""

from __future__ import annotations

import contextlib
import os
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from mail_support import StartSmtp

from meter.local_servers import free_port
from meter.settings import ConfigError, Settings
from meter.smtp_address import SmtpAddress
from notifications import smtp
from notifications.smtp import MailFailed


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("smtp://mail.example.com", SmtpAddress("mail.example.com", 25, "plain")),
        ("smtp://127.0.0.1:2525", SmtpAddress("127.0.0.1", 2525, "plain")),
        ("smtp+starttls://mail.example.com", SmtpAddress("mail.example.com", 587, "starttls")),
        ("smtps://mail.example.com", SmtpAddress("mail.example.com", 465, "tls")),
        ("SMTPS://mail.example.com:4650/", SmtpAddress("mail.example.com", 4650, "tls")),
        ("smtp://[::1]:25", SmtpAddress("::1", 25, "plain")),
        (
            "smtp+starttls://ann%40example.com:p%3Ass%2Fw%40rd@mail.example.com",
            SmtpAddress("mail.example.com", 587, "starttls", "ann@example.com", "p:ss/w@rd"),
        ),
    ],
)
def test_an_smtp_url_is_read_into_an_address(url: str, address: SmtpAddress) -> None:
    assert SmtpAddress.from_url(url) == address


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://mail.example.com", "must be an smtp://, smtp+starttls:// or smtps:// URL"),
        ("mail.example.com:25", "must be an smtp://"),
        ("smtp://", "needs a host"),
        ("smtp://:25", "needs a host"),
        ("smtp://mail.example.com:0", "the port must be a number"),
        ("smtp://mail.example.com:70000", "the port must be a number"),
        ("smtp://mail.example.com:twenty", "the port must be a number"),
        ("smtp://ann@mail.example.com", "both a user and a password"),
        ("smtp://:secret@mail.example.com", "both a user and a password"),
        ("smtp://mail.example.com/inbox", "takes no path, query or fragment"),
        ("smtp://mail.example.com?tls=1", "takes no path, query or fragment"),
    ],
)
def test_a_bad_smtp_url_says_why(url: str, why: str) -> None:
    with pytest.raises(ValueError) as err:
        SmtpAddress.from_url(url)
    assert why in str(err.value)


def test_the_settings_refuse_a_bad_smtp_url_without_showing_its_password() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"METER_SMTP_URL": "smtp://ann:hunter2@mail.example.com:x"})
    assert str(err.value).startswith("METER_SMTP_URL=") and "the port" in str(err.value)
    assert "hunter2" not in str(err.value)
    given = Settings.from_env({"METER_SMTP_URL": "smtps://ann:hunter2@mail.example.com"})
    assert "hunter2" not in repr(given)
    assert smtp.address_of(given) == SmtpAddress("mail.example.com", 465, "tls", "ann", "hunter2")
    assert "hunter2" not in repr(smtp.address_of(given))
    assert smtp.address_of(Settings.from_env({})) is None


@pytest.mark.parametrize(
    "value",
    ["nope", "billing@", "a@example.com, b@example.com", "meter <billing@example.com>\nBcc: x@y"],
)
def test_the_settings_refuse_a_mail_from_that_is_not_one_address(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"METER_MAIL_FROM": value})
    assert str(err.value).startswith("METER_MAIL_FROM=")


@pytest.mark.parametrize("value", ["billing@example.com", '"Meter, billing" <billing@example.com>'])
def test_the_settings_take_a_mail_from_with_or_without_a_name(value: str) -> None:
    assert Settings.from_env({"METER_MAIL_FROM": value}).mail_from == value
    assert Settings.from_env({}).mail_from == "meter <billing@localhost>"


def _message(to: str = "ann@example.com") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "meter <billing@example.com>"
    message["To"] = to
    message["Subject"] = "Your usage today passed $10.00"
    message["Message-ID"] = "<dlv_1@example.com>"
    message.set_content("You spent $12.00 today.\n")
    return message


async def test_a_message_goes_over_plain_smtp(smtp_server: StartSmtp) -> None:
    server = smtp_server()
    await smtp.send(SmtpAddress("127.0.0.1", server.port), _message())
    (got,) = await server.inbox.wait_for(1)
    assert got["Subject"] == "Your usage today passed $10.00"
    assert got["Message-ID"] == "<dlv_1@example.com>"
    assert got.get_content().splitlines() == ["You spent $12.00 today."]
    (received,) = server.inbox.received
    assert received.sender == "billing@example.com"
    assert received.recipients == ["ann@example.com"]


async def test_a_message_goes_over_starttls_with_a_login(smtp_server: StartSmtp) -> None:
    server = smtp_server(tls="starttls", login=("ann@example.com", "p:ss/w@rd"))
    url = f"smtp+starttls://ann%40example.com:p%3Ass%2Fw%40rd@localhost:{server.port}"
    address = SmtpAddress.from_url(url)
    await smtp.send(address, _message(), tls_context=server.client_context())
    (got,) = await server.inbox.wait_for(1)
    assert got["To"] == "ann@example.com"
    assert server.logins == [("ann@example.com", "p:ss/w@rd")]


async def test_a_wrong_password_is_a_permanent_failure(smtp_server: StartSmtp) -> None:
    server = smtp_server(tls="starttls", login=("ann", "right"))
    address = SmtpAddress("localhost", server.port, "starttls", "ann", "wrong")
    with pytest.raises(MailFailed) as failed:
        await smtp.send(address, _message(), tls_context=server.client_context())
    assert failed.value.permanent and failed.value.code == 535
    assert server.inbox.received == []


async def test_a_message_goes_over_tls_from_the_first_byte(smtp_server: StartSmtp) -> None:
    server = smtp_server(tls="tls")
    address = SmtpAddress.from_url(f"smtps://localhost:{server.port}")
    await smtp.send(address, _message(), tls_context=server.client_context())
    (got,) = await server.inbox.wait_for(1)
    assert got["Subject"] == "Your usage today passed $10.00"


def _connections_to(port: int) -> set[str]:
    """This process's TCP sockets connected to loopback ``port``: the client's side only
    (the server, on a thread of this process, closes its own when it likes)."""
    ours = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            ours.add(os.readlink(fd).removeprefix("socket:[").removesuffix("]"))
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in ours:
                found.add(fields[9])
    return found


@pytest.mark.parametrize("tls", ["tls", "starttls", "refused"])
async def test_send_returns_with_its_connection_closed(smtp_server: StartSmtp, tls: str) -> None:
    """A TLS connection's shutdown outlives ``close()``: ``send`` waits for it, so no
    socket is left for the garbage collector when the loop stops (as after a test)."""
    server = smtp_server(tls="starttls" if tls == "refused" else tls)
    context = None if tls == "refused" else server.client_context()  # unknown CA: refused
    address = SmtpAddress("localhost", server.port, "starttls" if tls == "refused" else tls)
    for _ in range(5):
        with contextlib.suppress(MailFailed):
            await smtp.send(address, _message(), tls_context=context)
        assert _connections_to(server.port) == set()
    assert len(server.inbox.received) == (0 if tls == "refused" else 5)


async def test_a_certificate_from_an_unknown_ca_is_refused_and_may_be_retried(
    smtp_server: StartSmtp,
) -> None:
    server = smtp_server(tls="starttls")
    with pytest.raises(MailFailed) as failed:  # the system's CAs do not know trustme's
        await smtp.send(SmtpAddress("localhost", server.port, "starttls"), _message())
    assert not failed.value.permanent
    assert server.inbox.received == []


async def test_plain_means_plain_even_when_the_server_offers_starttls(
    smtp_server: StartSmtp,
) -> None:
    server = smtp_server(tls="starttls")  # it requires STARTTLS: a plain client is refused
    with pytest.raises(MailFailed) as failed:
        await smtp.send(SmtpAddress("localhost", server.port, "plain"), _message())
    assert failed.value.code == 530 and failed.value.permanent
    assert server.inbox.received == []


@pytest.mark.parametrize(
    ("reply", "permanent"),
    [("550 5.1.1 no such mailbox", True), ("451 4.3.0 try again later", False)],
)
async def test_a_refused_recipient_is_permanent_for_5xx_and_transient_for_4xx(
    smtp_server: StartSmtp, reply: str, permanent: bool
) -> None:
    server = smtp_server()
    server.inbox.refuse = reply
    with pytest.raises(MailFailed) as failed:
        await smtp.send(SmtpAddress("127.0.0.1", server.port), _message())
    assert failed.value.permanent is permanent
    assert failed.value.code == int(reply[:3]) and reply[4:] in failed.value.detail
    assert server.inbox.received == []


async def test_a_refused_connection_is_transient() -> None:
    with pytest.raises(MailFailed) as failed:
        await smtp.send(SmtpAddress("127.0.0.1", free_port()), _message())
    assert not failed.value.permanent and failed.value.code is None


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (aiosmtplib.SMTPReadTimeoutError("timed out"), False),
        (aiosmtplib.SMTPServerDisconnected("gone"), False),
        (aiosmtplib.SMTPDataError(554, "spam"), True),
        (aiosmtplib.SMTPSenderRefused(421, "closing", "a@b.c"), False),
        (TimeoutError(), False),
        (ConnectionResetError(), False),
    ],
)
def test_errors_are_sorted_into_retry_or_not(error: Exception, permanent: bool) -> None:
    assert smtp.failure(error).permanent is permanent
