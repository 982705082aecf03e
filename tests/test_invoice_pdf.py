"""Invoices printed (billing/render.py): where an invoice stands and a draft's page (pure),
then a real invoice closed from booked usage: its PDF's text, read back with pypdf,
says its number, lines and totals to the cent, and a page of it printed with pdftoppm is
kept as docs/screenshots/invoice-pdf.png; the admin API's PDF route; and the
invoice.finalized email, which carries the PDF."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pypdf
import pytest
from browser import SCREENSHOTS
from ledger_fixtures import running_worker
from mail_support import StartSmtp
from payments_support import ACTOR, Paying
from test_admin_support import AUTH, call, start
from test_invoices import DEC, LAST_DAY, booked, closer, overage_account
from test_notification_deliveries import mail_outlet, pump, raise_event

from admin import models
from billing import render, standing
from billing.invoices import Invoice, Line, load
from billing.periods import Period
from meter.live_state import Call
from meter.money import money

AT = DEC.end_at() + timedelta(minutes=2)  # the close, and the finalization
SELLER = {"seller_name": "Meter Ltd", "seller_address": "1 Main Street;London EC1A 1AA;GB"}
# (route, price) of each call: two routes, amounts not whole dollars.
CALLS = (("chat", 4_125_000), ("chat", 3_500_000), ("embed", 2_990_000), ("chat", 1_760_000))


def text_of(pdf: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


# -- pure ---------------------------------------------------------------------------------

NOW = datetime(2027, 2, 10, tzinfo=UTC)
SAMPLE = Invoice(
    id="inv_sample",
    account_id="acct_sample",
    period=Period(date(2026, 12, 1), date(2027, 1, 1)),
    status="open",
    number="INV-000007",
    currency="usd",
    usage_amount=12_000_000,
    fee_amount=0,
    credits_applied=10_000_000,
    amount_due=2_000_000,
    amount_paid=0,
    balance_at_end=-2_000_000,
    seller={"name": "Meter Ltd", "address": ["1 Main Street"], "tax_id": None},
    buyer={"name": "<b>Acme</b> & Co", "email": None, "address": [], "tax_ids": []},
    created_at=datetime(2027, 1, 1, tzinfo=UTC),
    finalize_after=datetime(2027, 1, 1, 1, tzinfo=UTC),
    finalized_at=datetime(2027, 1, 1, 1, tzinfo=UTC),
    due_at=datetime(2027, 1, 15, 1, tzinfo=UTC),
    paid_at=None,
    lines=(
        Line(1, "usage", "Usage: chat (3 calls)", "chat", 3, 12_000_000),
        Line(2, "credits_applied", "Applied credit balance", None, None, -10_000_000),
    ),
)


@pytest.mark.parametrize(
    ("status", "due_at", "group"),
    [
        ("draft", None, standing.UPCOMING),
        ("open", NOW + timedelta(days=1), standing.UPCOMING),
        ("open", NOW, standing.ACTION_REQUIRED),  # due now: due
        ("open", NOW - timedelta(days=1), standing.ACTION_REQUIRED),
        ("paid", NOW - timedelta(days=30), standing.HISTORY),
        ("void", NOW - timedelta(days=1), standing.HISTORY),
        ("uncollectible", NOW - timedelta(days=90), standing.HISTORY),
    ],
)
def test_where_an_invoice_stands(status: str, due_at: datetime | None, group: str) -> None:
    assert standing.standing(replace(SAMPLE, status=status, due_at=due_at), NOW) == group


def test_the_groups_keep_the_order_given() -> None:
    a, b = replace(SAMPLE, id="inv_a"), replace(SAMPLE, id="inv_b", status="paid")
    c = replace(SAMPLE, id="inv_c", due_at=NOW + timedelta(days=3))
    d = replace(SAMPLE, id="inv_d")
    groups = standing.grouped([a, b, c, d], NOW)
    assert {k: [i.id for i in v] for k, v in groups.items()} == {
        standing.ACTION_REQUIRED: ["inv_a", "inv_d"],
        standing.UPCOMING: ["inv_c"],
        standing.HISTORY: ["inv_b"],
    }


def test_a_draft_is_marked_draft_has_no_number_and_the_page_escapes_what_it_shows() -> None:
    draft = replace(SAMPLE, status="draft", number=None, finalized_at=None, due_at=None)
    page = render.html(draft)
    assert "DRAFT" in page and "INV-" not in page and "Draft invoice" in page
    assert "&lt;b&gt;Acme&lt;/b&gt; &amp; Co" in page and "<b>Acme" not in page
    assert render.filename(draft) == "draft-inv_sample.pdf"
    assert render.filename(SAMPLE) == "INV-000007.pdf"
    # The block the portal embeds is the document's invoice, without its head.
    body = str(render.body(SAMPLE))
    assert body.startswith('<article class="invoice') and body in render.html(SAMPLE)
    assert "<style>" not in body
    # The credits are a total of their own, not a line of the table.
    assert body.count("Applied credit balance") == 1
    assert "Balance carried forward" not in body  # none carried: no row


def test_a_balance_carried_forward_is_a_line_and_a_total() -> None:
    carried = replace(
        SAMPLE,
        carried_amount=5_000_000,
        amount_due=7_000_000,
        lines=(
            *SAMPLE.lines[:1],
            Line(2, "carried_forward", "Balance carried forward", None, None, 5_000_000),
            *SAMPLE.lines[1:],
        ),
    )
    page = str(render.body(carried))
    assert page.count("Balance carried forward") == 2  # the line and the total
    assert page.count("$5.00") == 2 and "$7.00" in page


# -- a real invoice -----------------------------------------------------------------------


async def december_invoice(paying: Paying) -> Invoice:
    """Acme's December: $10 of credits, $12.375 of calls on two routes, a profile with an
    address and a PO number; closed and finalized after the month's end."""
    account, shard = await overage_account(paying, "Acme")
    profile = models.BillingProfileIn(
        legal_name="Acme GmbH",
        address_line1="Friedrichstraße 68",
        city="Berlin",
        postal_code="10117",
        country="DE",
        po_number="PO-2026-17",
        invoice_email="billing@acme.test",
    )
    await paying.services.profiles.put_profile(ACTOR, account, profile, if_match=None)
    async with running_worker(paying.settings):
        for route, price in CALLS:
            call_ = Call(shard, account, "proj_x", "key_x", route, price)
            assert (await paying.live.admit(call_, LAST_DAY)).admitted
        await booked(paying)
    c = closer(paying, AT, **SELLER)
    assert await c.close_period(DEC) == 1
    assert await c.finalize_due() == 1
    async with paying.pool.acquire() as conn:
        invoice_id = await conn.fetchval("select id from invoices where account_id = $1", account)
        found = await load(conn, invoice_id)
    assert found is not None and found.status == "open"
    return found


async def test_the_pdf_says_the_invoice_to_the_cent_and_a_page_of_it_is_legible(
    paying: Paying, tmp_path: Path
) -> None:
    invoice = await december_invoice(paying)
    # $12.375 used, $10 of credits: $2.375 drawn, $2.37 due in whole cents (the half
    # cent waits for the next period), so credits covered $10.005.
    assert (invoice.usage_amount, invoice.credits_applied, invoice.amount_due) == (
        12_375_000,
        10_005_000,
        2_370_000,
    )
    pdf = await render.pdf_off_loop(invoice)
    assert pdf.startswith(b"%PDF-")
    text = text_of(pdf)
    flat = " ".join(text.split())
    assert invoice.number == "INV-000001" and flat.count("INV-000001") == 2
    assert "DRAFT" not in flat
    usage = [line for line in invoice.lines if line.kind == "usage"]
    assert [(u.route, u.calls, u.amount) for u in usage] == [
        ("chat", 3, 9_385_000),
        ("embed", 1, 2_990_000),
    ]
    for u in usage:
        assert f"{u.description} {u.calls:,} {money(u.amount)}" in flat, u
    totals = [
        ("Usage", "$12.38"),  # 12.375, half away from zero
        ("Plan fee", "$0.00"),
        ("Applied credit balance", "-$10.01"),  # 10.005, half away from zero
        ("Amount due", "$2.37"),
        ("Amount paid", "$0.00"),
        ("Amount remaining", "$2.37"),
    ]
    for label, amount in totals:
        assert f"{label} {amount}" in flat, label
    assert money(invoice.usage_amount) == "$12.38" and money(invoice.amount_due) == "$2.37"
    for party in ("Meter Ltd", "1 Main Street", "Acme GmbH", "Friedrichstraße 68", "PO-2026-17"):
        assert party in flat, party
    for label, when in (("Issued", "1 Jan 2027"), ("Due", "15 Jan 2027")):
        assert f"{label} {when}" in flat, label
    assert "Period 1 Dec 2026 \u2013 31 Dec 2026" in flat  # an en dash between

    (tmp_path / "invoice.pdf").write_bytes(pdf)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    out = SCREENSHOTS / "invoice-pdf"
    printer = await asyncio.create_subprocess_exec(
        *("pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile"),
        *(str(tmp_path / "invoice.pdf"), str(out)),
        stderr=asyncio.subprocess.PIPE,
    )
    _, errors = await printer.communicate()
    assert printer.returncode == 0, errors
    png = out.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000  # an A4 page with text on it


async def test_the_admin_api_serves_the_pdf_by_its_number_and_not_across_accounts(
    aiohttp_client: Any, redis_url: str, database_url: str, paying: Paying
) -> None:
    invoice = await december_invoice(paying)
    client = await start(aiohttp_client, redis_url, database_url)
    async with client.get(f"/v1/invoices/{invoice.id}.pdf", headers=AUTH) as r:
        assert r.status == 200 and r.content_type == "application/pdf"
        assert r.headers["Content-Disposition"] == 'attachment; filename="INV-000001.pdf"'
        assert r.headers["Cache-Control"] == "no-store"
        pdf = await r.read()
    assert "INV-000001" in text_of(pdf)
    # The JSON read beside it is still the JSON read.
    got = await call(client, "GET", f"/v1/invoices/{invoice.id}", status=200)
    assert got["number"] == "INV-000001"
    other = (await call(client, "POST", "/v1/accounts", {"name": "Other"}, status=201))["id"]
    token = await call(
        client, "POST", f"/v1/accounts/{other}/tokens", {"name": "o", "role": "owner"}, status=201
    )
    theirs = {"Authorization": f"Bearer {token['token']}"}
    async with client.get(f"/v1/invoices/{invoice.id}.pdf", headers=theirs) as r:
        assert r.status == 404 and r.content_type == "application/problem+json"
    async with client.get("/v1/invoices/inv_0000000000000000000000.pdf", headers=AUTH) as r:
        assert r.status == 404
    doc = await call(client, "GET", "/v1/openapi.json", status=200)
    answer = doc["paths"]["/v1/invoices/{invoice_id}.pdf"]["get"]["responses"]["200"]
    assert answer["content"] == {
        "application/pdf": {"schema": {"type": "string", "format": "binary"}}
    }


async def test_the_finalized_invoice_email_carries_its_pdf(
    paying: Paying, smtp_server: StartSmtp
) -> None:
    server = smtp_server()
    invoice = await december_invoice(paying)
    await raise_event(paying, invoice.account_id, "balance.low", "low")  # mailed, no invoice
    out = await mail_outlet(paying, server.port)
    try:
        assert await pump(out) == 2
        messages = await server.inbox.wait_for(2)
    finally:
        await out.http.close()
    by_type = {m["X-Meter-Event-Type"]: m for m in messages}
    assert list(by_type["balance.low"].iter_attachments()) == []
    message = by_type["invoice.finalized"]
    assert message["To"] == "billing@acme.test"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == f"{invoice.number}.pdf" == "INV-000001.pdf"
    pdf = attachment.get_content()
    assert isinstance(pdf, bytes) and pdf.startswith(b"%PDF-")
    flat = " ".join(text_of(pdf).split())
    assert "INV-000001" in flat and "Amount due $2.37" in flat

    # The message itself is still the text and HTML parts the templates make.
    body = message.get_body(("plain",))
    assert body is not None and "INV-000001" in body.get_content()
