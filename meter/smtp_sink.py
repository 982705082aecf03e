"""A local SMTP server that keeps every message it is sent, for ``meter dev``.

``python -m meter.smtp_sink --port N --maildir DIR`` takes any mail on loopback (no
login, no TLS), files each message in the Maildir ``DIR`` (``new/``, one file a
message, readable by any mail client or by ``less``) with a ``Delivered-To`` line per
envelope recipient, and logs one line per message (from, to, subject). Nothing is
relayed anywhere. ``--show DIR`` prints the newest message's plain-text part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import logging
import mailbox
import signal
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from meter.logs import setup_logging

log = logging.getLogger("meter.smtp_sink")


class MaildirSink:
    """The aiosmtpd handler: each message into the Maildir, one log line."""

    def __init__(self, folder: Path) -> None:
        self.maildir = mailbox.Maildir(folder, create=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        delivered = b"".join(b"Delivered-To: " + to.encode() + b"\r\n" for to in envelope.rcpt_tos)
        key = self.maildir.add(delivered + raw)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        log.info(
            "mail",
            extra={
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "subject": str(parsed.get("Subject", "")),
                "file": key,
            },
        )
        return "250 OK: kept"


def messages(folder: Path) -> list[EmailMessage]:
    """Every message in the Maildir ``folder``, oldest first."""
    files = [
        p for sub in ("new", "cur") if (folder / sub).is_dir() for p in (folder / sub).iterdir()
    ]
    # Maildir names start with the delivery time in seconds; the mtime orders within one.
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
    out = []
    for path in files:
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        out.append(parsed)
    return out


def newest(folder: Path) -> EmailMessage | None:
    """The message filed last in the Maildir ``folder``; None: none yet."""
    found = messages(folder)
    return found[-1] if found else None


def show(message: EmailMessage) -> str:
    head = "".join(
        f"{h}: {message[h]}\n" for h in ("From", "To", "Date", "Subject") if h in message
    )
    body = message.get_body(("plain",))
    text = body.get_content() if body is not None else "(no plain-text part)\n"
    return head + "\n" + text.replace("\r\n", "\n")


async def serve(host: str, port: int, folder: Path) -> asyncio.Server:
    handler = MaildirSink(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="meter-smtp-sink"), host, port)
    log.info(
        "smtp sink listening", extra={"address": f"smtp://{host}:{port}", "maildir": str(folder)}
    )
    return server


async def _run(host: str, port: int, folder: Path) -> None:
    server = await serve(host, port, folder)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meter.smtp_sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--maildir", type=Path, help="where to keep the messages")
    parser.add_argument("--show", type=Path, metavar="MAILDIR", help="print the newest message")
    args: Any = parser.parse_args(argv)
    if args.show is not None:
        found = newest(args.show)
        if found is None:
            print(f"no mail in {args.show} yet", file=sys.stderr)
            return 1
        print(show(found), end="")
        return 0
    if args.maildir is None:
        parser.error("--maildir is required to serve")
    setup_logging("info")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args.host, args.port, args.maildir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
