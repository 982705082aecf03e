"""The emails: an outbox event (or a sign-in request) made into one message for one person.

Each event type has a small template in ``templates/mail/events/<type>.j2`` (unknown
types get ``fallback.j2``) that fills the blocks of a layout: ``subject``, ``happened``,
``facts`` (the figures, in dollars, through ``fact``), ``todo`` and ``link_label``. The
same template is rendered three times: into ``subject.txt`` and ``layout.txt`` without
escaping, and into ``layout.html`` with autoescaping on, so the subject, the plain part
and the HTML part always say the same.

The ``Message-ID`` is made from the caller's ``message_id`` (the delivery's id), so a
retried send is the same message to the recipient's mail system, and it can drop the
copy. Pure: nothing here sends (``notifications.smtp``) or reads a database.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import jinja2
from markupsafe import Markup

from meter.money import money
from meter.settings import Settings
from notifications import events

NOTIFICATIONS_PATH = "/notifications"
_EVENTS = "events/{}.j2"
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,200}")


def _paragraph(text: str) -> str:
    """One paragraph of prose at 72 columns; a URL is never broken."""
    return textwrap.fill(" ".join(text.split()), 72, break_long_words=False, break_on_hyphens=False)


def _clause(text: object) -> str:
    """A message from elsewhere (a bank's decline) put inside our sentence: no final stop."""
    return str(text).strip().rstrip(".")


def _money(micros: object) -> str:
    return money(micros) if type(micros) is int else "an unknown amount"


def _shown(value: object, kind: str) -> str | None:
    if value is None or value == "":
        return None
    if kind == "money" and type(value) is int:
        return money(value)
    return str(value)


def _text_fact(label: str, value: object, kind: str = "money") -> str:
    shown = _shown(value, kind)
    return "" if shown is None else f"{label}: {shown}"


def _html_fact(label: str, value: object, kind: str = "money") -> Markup:
    shown = _shown(value, kind)
    if shown is None:
        return Markup("")
    return Markup(
        '<tr><th style="text-align:left;padding:4px 16px 4px 0;font-weight:normal;'
        'color:#656d76;">{}</th><td style="padding:4px 0;font-weight:600;">{}</td></tr>'
    ).format(label, shown)


def _text_link(label: str, url: str) -> str:
    return f"Sign in to {label}:\n{url}\n"


def _html_link(label: str, url: str) -> Markup:
    return Markup(
        '<tr><td style="padding:6px 0;"><a href="{}" style="display:inline-block;padding:8px'
        " 14px;background:#1f6feb;color:#ffffff;border-radius:6px;text-decoration:none;"
        'font-weight:600;">Sign in to {}</a></td></tr>'
    ).format(url, label)


def _environment(
    autoescape: bool, fact: Callable[..., Any], link: Callable[..., Any]
) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("notifications", "templates/mail"),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=_money, paragraph=_paragraph, clause=_clause)
    env.globals.update(fact=fact, signin_link=link)
    return env


@functools.cache
def _environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    """(text, html): the same templates, unescaped and escaped."""
    return (
        _environment(False, _text_fact, _text_link),
        _environment(True, _html_fact, _html_link),
    )


def _template_name(type_: str) -> str:
    text, _ = _environments()
    name = _EVENTS.format(type_)
    try:
        text.get_template(name)
    except jinja2.TemplateNotFound:
        return "fallback.j2"
    return name


def _render(name: str, context: dict[str, Any]) -> tuple[str, str, str]:
    """(subject, text, html) of template ``name``."""
    text_env, html_env = _environments()
    text_template = text_env.get_template(name)
    subject = " ".join(text_template.render({**context, "layout": "subject.txt"}).split())
    text = text_template.render({**context, "layout": "layout.txt", "subject": subject})
    html = html_env.get_template(name).render(
        {**context, "layout": "layout.html", "subject": subject}
    )
    return subject, _tidy(text), html


def _tidy(text: str) -> str:
    """Trailing spaces off (but the signature's "-- "), at most one blank line in a row."""
    lines = [line if line == "-- " else line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def _from(settings: Settings) -> Address:
    header = HeaderRegistry()("from", settings.mail_from)
    assert isinstance(header, AddressHeader)  # checked when the settings were read
    return header.addresses[0]


def _message_id(message_id: str, sender: Address) -> str:
    """``<id@domain>``: the caller's id, already one, or made one with our domain."""
    if message_id.startswith("<") and message_id.endswith(">") and "@" in message_id:
        return message_id
    if not _TOKEN.fullmatch(message_id):
        raise ValueError(f"a message id is letters, digits, '.', '_' and '-': {message_id!r}")
    return f"<{message_id}@{sender.domain}>"


def _message(
    settings: Settings,
    recipient: str,
    subject: str,
    text: str,
    html: str,
    *,
    message_id: str,
    date: datetime,
) -> EmailMessage:
    sender = _from(settings)
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = format_datetime(date if date.tzinfo else date.replace(tzinfo=UTC))
    message["Message-ID"] = _message_id(message_id, sender)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to us
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def _account_label(account_name: str | None, account_id: str | None) -> str:
    if account_name:
        return account_name
    return account_id or "your billing account"


def compose(
    event: dict[str, Any],
    recipient: str,
    settings: Settings,
    *,
    message_id: str,
    account_name: str | None,
) -> EmailMessage:
    """The email telling ``recipient`` of an outbox ``event`` (id, type, account_id,
    occurred_at, data: figures in integer micros)."""
    type_ = event["type"]
    portal = settings.portal_public_url.rstrip("/")
    label = _account_label(account_name, event.get("account_id"))
    subject, text, html = _render(
        _template_name(type_),
        {
            "type": type_,
            "title": events.EVENT_TYPES.get(type_, f"Billing event {type_}"),
            "event_id": event["id"],
            "data": event.get("data") or {},
            "account_label": label,
            "link": events.portal_link(portal, type_) or portal + "/",
            "notifications_link": portal + NOTIFICATIONS_PATH,
            "recipient": recipient,
        },
    )
    if account_name:
        subject = f"{account_name}: {subject}"
    message = _message(
        settings,
        recipient,
        subject,
        text,
        html,
        message_id=message_id,
        date=event["occurred_at"],
    )
    message["X-Meter-Event-Id"] = event["id"]
    message["X-Meter-Event-Type"] = type_
    return message


def compose_signin(
    recipient: str,
    links: Sequence[tuple[str, str]],
    settings: Settings,
    *,
    message_id: str,
    now: datetime,
) -> EmailMessage:
    """The email of one-time sign-in ``links``, (account name, URL) pairs, to ``recipient``."""
    minutes = max(1, round(settings.portal_link_ttl / 60))
    subject, text, html = _render(
        "signin.j2",
        {
            "links": list(links),
            "recipient": recipient,
            "valid_for": f"{minutes} minute{'s' if minutes != 1 else ''}",
            "portal_url": settings.portal_public_url.rstrip("/"),
            "account_label": "your billing accounts",
            "link": None,
            "notifications_link": settings.portal_public_url.rstrip("/") + NOTIFICATIONS_PATH,
        },
    )
    return _message(settings, recipient, subject, text, html, message_id=message_id, date=now)
