"""The emails: every event type composed into a plain and an HTML part that say the same,
in dollars, with a link to the portal page that helps; headers a mail system can rely on.

Pure: no server. ``SAMPLES`` holds, for each event type, data shaped as the code that
raises it writes it (payments/service.py, payments/recharges.py), and what the email
must then say.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from meter.settings import Settings
from notifications import events
from notifications.mail import compose, compose_signin

PORTAL = "https://billing.example.com"
SETTINGS = Settings.from_env(
    {"METER_PORTAL_PUBLIC_URL": PORTAL, "METER_MAIL_FROM": "Meter billing <billing@meter.test>"}
)
WHEN = datetime(2026, 12, 7, 13, 5, 9, tzinfo=UTC)
PAYMENT = {"payment_id": "pay_7", "amount": 25_000_000, "stripe_reference": "pi_123"}
DECLINED = {"payment_id": "pay_8", "amount": 25_000_000, "code": "card_declined"}
TEMPLATES = Path(__file__).resolve().parent.parent / "notifications" / "templates" / "mail"

# type -> (data, what the subject says, figures both parts must show)
SAMPLES: dict[str, tuple[dict[str, Any], str, list[str]]] = {
    "usage.daily_threshold_passed": (
        {"threshold": 10_000_000, "spent": 12_340_000, "daily_budget": 50_000_000},
        "Usage today passed $10.00",
        ["$10.00", "$12.34", "$50.00", "$37.66"],
    ),
    "usage.daily_limit_reached": (
        {"spent": 50_000_000, "daily_budget": 50_000_000},
        "Daily budget of $50.00 reached",
        ["$50.00", "00:00 UTC"],
    ),
    "balance.low": (
        {"balance": 4_500_000, "low_balance_threshold": 5_000_000, "spent_today": 1},
        "Balance low: $4.50 left",
        ["$4.50", "$5.00"],
    ),
    "balance.overage_started": (
        {"balance": -1_250_000, "daily_hard_limit": None},
        "Balance below zero",
        ["-$1.25"],
    ),
    "credits.added": (PAYMENT, "$25.00 added to your balance", ["$25.00", "pay_7"]),
    "purchase.succeeded": (PAYMENT, "purchase of $25.00 of credits went through", ["$25.00"]),
    "purchase.failed": (
        {**DECLINED, "message": "Your card was declined."},
        "purchase of $25.00 of credits failed",
        ["$25.00", "Your card was declined. Nothing was charged"],
    ),
    "recharge.succeeded": (PAYMENT, "Auto recharge added $25.00", ["$25.00"]),
    "recharge.failed": (
        {**DECLINED, "message": "Insufficient funds"},
        "auto recharge of $25.00 was declined",
        ["$25.00", "Insufficient funds"],
    ),
    "recharge.requires_action": (
        {**DECLINED, "code": "authentication_required", "message": None},
        "auto recharge of $25.00 needs the card holder",
        ["$25.00", "3-D Secure"],
    ),
    "recharge.paused": (
        {**DECLINED, "consecutive_failures": 3, "reason": "3 recharges failed in a row"},
        "Auto recharge is paused",
        ["$25.00", "after 3 failed charges"],
    ),
    "recharge.refused_by_cap": (
        {
            "payment_id": "pay_9",
            "amount": 25_000_000,
            "balance": 2_000_000,
            "cap": "max_per_day",
            "message": "2 recharges already today",
        },
        "auto recharge of $25.00 was held back",
        ["$25.00", "$2.00", "2 recharges already today"],
    ),
    "invoice.finalized": (
        {
            "invoice_id": "inv_1",
            "number": "INV-000007",
            "period": "2026-12",
            "amount_due": 2_000_000,
            "usage": 12_000_000,
            "credits_applied": 10_000_000,
            "due_at": "2027-01-15T00:02:00+00:00",
        },
        "Invoice INV-000007 for 2026-12: $2.00 due",
        ["$12.00", "$10.00", "$2.00", "2027-01-15"],
    ),
    "payment.refunded": (
        {"refund_id": "rfd_1", "payment_id": "pay_1", "amount": 5_000_000},
        "$5.00 refunded to your card",
        ["$5.00", "rfd_1", "taken from the balance"],
    ),
    "payment_method.expiring": (
        {
            "payment_method_id": "pm_1",
            "brand": "visa",
            "last4": "4242",
            "exp_month": 1,
            "exp_year": 2027,
        },
        "Visa •••• 4242 expires at the end of 01/2027",
        ["01/2027"],
    ),
    "webhook_endpoint.disabled": (
        {"endpoint_id": "we_1", "url": "https://hooks.example.com/in", "reason": "410 Gone"},
        "A webhook endpoint was disabled",
        ["https://hooks.example.com/in", "410 Gone"],
    ),
}


def _event(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": "evt_1", "type": type_, "account_id": "acct_1", "occurred_at": WHEN, "data": data}


def _parts(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_every_event_type_has_a_template_and_a_sample() -> None:
    assert set(SAMPLES) == set(events.EVENT_TYPES)
    for type_ in events.EVENT_TYPES:
        assert (TEMPLATES / "events" / f"{type_}.j2").is_file(), type_


@pytest.mark.parametrize("type_", sorted(SAMPLES))
def test_an_event_email_says_what_happened_in_dollars_with_a_link(type_: str) -> None:
    data, subject, figures = SAMPLES[type_]
    message = compose(
        _event(type_, data), "ann@example.com", SETTINGS, message_id="dlv_1", account_name="Acme"
    )
    assert message["Subject"].startswith("Acme: ") and subject in message["Subject"]
    text, html = _parts(message)
    link = events.portal_link(PORTAL, type_)
    assert link is not None
    for part in (text, html):
        assert "Acme" in part
        for figure in figures:
            assert figure.replace("&", "&amp;") in " ".join(part.split()), (figure, part)
        assert link in part and f"{PORTAL}/notifications" in part
    assert f'href="{link}"' in html
    assert "None" not in text and "unknown amount" not in text + message["Subject"]
    assert all(len(line) <= 72 or "://" in line for line in text.splitlines())


def test_the_headers_are_what_a_mail_system_relies_on() -> None:
    data, _, _ = SAMPLES["balance.low"]
    message = compose(
        _event("balance.low", data),
        "ann@example.com",
        SETTINGS,
        message_id="dlv_42",
        account_name="Acme",
    )
    assert message["From"] == "Meter billing <billing@meter.test>"
    assert message["To"] == "ann@example.com"
    assert message["Message-ID"] == "<dlv_42@meter.test>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert parsedate_to_datetime(message["Date"]) == WHEN
    assert message["X-Meter-Event-Id"] == "evt_1"
    assert message["X-Meter-Event-Type"] == "balance.low"
    assert message.get_content_type() == "multipart/alternative"
    again = compose(
        _event("balance.low", data),
        "ann@example.com",
        SETTINGS,
        message_id="dlv_42",
        account_name="Acme",
    )
    assert again["Message-ID"] == message["Message-ID"]  # a retry is the same message
    assert again.as_bytes().split(b"\n\n", 1)[0].count(b"Message-ID") == 1


def test_a_message_id_that_is_not_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match="message id"):
        compose(_event("balance.low", {}), "a@b.c", SETTINGS, message_id="a b", account_name=None)


def test_the_html_part_escapes_what_it_is_given() -> None:
    data = {**SAMPLES["purchase.failed"][0], "message": "<script>alert(1)</script> & co"}
    message = compose(
        _event("purchase.failed", data),
        "ann@example.com",
        SETTINGS,
        message_id="dlv_1",
        account_name="<b>Evil</b> & Co",
    )
    text, html = _parts(message)
    assert "<script>" not in html and "<b>Evil</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert "&lt;b&gt;Evil&lt;/b&gt; &amp; Co" in html
    assert "<script>alert(1)</script> & co" in " ".join(text.split())  # plain text is plain
    assert message["Subject"].startswith("<b>Evil</b> & Co: ")


def test_an_event_without_a_template_gets_the_fallback_and_no_name_the_account_id() -> None:
    message = compose(
        _event("invoice.issued", {"amount": 5_000_000}),  # a type still to come
        "ann@example.com",
        SETTINGS,
        message_id="dlv_1",
        account_name=None,
    )
    assert message["Subject"] == "Billing event invoice.issued"
    text, html = _parts(message)
    for part in (text, html):
        assert "acct_1" in part and "$5.00" in part and f"{PORTAL}/" in part


def test_missing_figures_leave_their_lines_out_rather_than_fail() -> None:
    message = compose(
        _event("usage.daily_threshold_passed", {"threshold": 10_000_000}),
        "ann@example.com",
        SETTINGS,
        message_id="dlv_1",
        account_name="Acme",
    )
    text, _ = _parts(message)
    assert "Threshold: $10.00" in text
    assert "Spent today" not in text and "Daily budget" not in text


def test_the_signin_email_has_one_link_per_account() -> None:
    links = [("Acme", f"{PORTAL}/s/aaa"), ("Beta & <Sons>", f"{PORTAL}/s/bbb")]
    message = compose_signin("ann@example.com", links, SETTINGS, message_id="signin_1", now=WHEN)
    assert message["Subject"] == "Your sign-in links to the billing portal"
    assert message["Message-ID"] == "<signin_1@meter.test>"
    assert message["Auto-Submitted"] == "auto-generated"
    text, html = _parts(message)
    assert f"Sign in to Acme:\n{PORTAL}/s/aaa" in text
    assert f"Sign in to Beta & <Sons>:\n{PORTAL}/s/bbb" in text
    assert f'href="{PORTAL}/s/aaa"' in html and "Sign in to Beta &amp; &lt;Sons&gt;" in html
    assert "within 5 minutes" in text
    assert re.findall(r"/s/\w+", text) == ["/s/aaa", "/s/bbb"]
    one = compose_signin("ann@example.com", links[:1], SETTINGS, message_id="s", now=WHEN)
    assert one["Subject"] == "Your sign-in link to the billing portal"
