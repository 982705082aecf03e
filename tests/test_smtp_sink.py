"""The development mail sink: real SMTP in, one Maildir file and one log line per message."""

from __future__ import annotations

import email
import email.policy
import logging
import mailbox
from email.message import EmailMessage
from pathlib import Path

import pytest

from meter import smtp_sink
from meter.local_servers import free_port
from meter.smtp_address import SmtpAddress
from notifications import smtp


def _message(subject: str, to: str = "ann@example.com") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "meter <billing@localhost>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(f"Body of {subject}.\n")
    message.add_alternative(f"<p>Body of {subject}.</p>", subtype="html")
    return message


async def test_the_sink_keeps_each_message_in_the_maildir_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mail"
    port = free_port()
    server = await smtp_sink.serve("127.0.0.1", port, folder)
    try:
        with caplog.at_level(logging.INFO, logger="meter.smtp_sink"):
            await smtp.send(SmtpAddress("127.0.0.1", port), _message("First"))
            await smtp.send(SmtpAddress("127.0.0.1", port), _message("Second", "bob@example.com"))
    finally:
        server.close()
        await server.wait_closed()
    kept = sorted(
        (
            email.message_from_bytes(m.as_bytes(), policy=email.policy.default)
            for m in mailbox.Maildir(folder, create=False)
        ),
        key=lambda m: str(m["Subject"]),
    )
    assert [str(m["Subject"]) for m in kept] == ["First", "Second"]
    assert [m["Delivered-To"] for m in kept] == ["ann@example.com", "bob@example.com"]
    lines = [r for r in caplog.records if r.getMessage() == "mail"]
    assert [(r.__dict__["to"], r.__dict__["subject"]) for r in lines] == [
        (["ann@example.com"], "First"),
        (["bob@example.com"], "Second"),
    ]
    assert {r.__dict__["from"] for r in lines} == {"billing@localhost"}

    assert smtp_sink.main(["--show", str(folder)]) == 0
    shown = capsys.readouterr().out
    assert "Subject: Second\n" in shown and "To: bob@example.com\n" in shown
    assert shown.endswith("Body of Second.\n") and "<p>" not in shown


def test_show_says_when_there_is_no_mail_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert smtp_sink.main(["--show", str(tmp_path / "nothing")]) == 1
    assert "no mail in" in capsys.readouterr().err
