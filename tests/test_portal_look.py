"""The portal's look in a real browser: a sample page extending base.html with every
macro, served by a small aiohttp app through the portal's own template setup, read by
chromium. Saves docs/screenshots/portal-look.png and portal-look-phone.png."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.test_utils import TestServer
from browser import PHONE, NewPage, screenshot
from playwright.async_api import Page, expect

from portal.templating import setup_templates

CSRF = "csrf-7b1f0c"

SAMPLE = """\
{% extends "base.html" %}
{% import "macros.html" as ui %}
{% block title %}Overview{% endblock %}

{% block account_switcher %}
<form method="get" action="/">
  <label class="visually-hidden" for="account-switch">Billing account</label>
  {# a bare <select>: the macro's label and field wrapper do not fit a top bar #}
  <select id="account-switch" name="account">
    {% for value, label in accounts %}
    <option value="{{ value }}">{{ label }}</option>
    {% endfor %}
  </select>
  <button class="button button-small" type="submit">Switch</button>
</form>
{% endblock %}

{% block sign_out %}
<form method="post" action="/sign-out">
  {{ ui.csrf_input(csrf_token) }}
  <button class="button button-small button-quiet" type="submit">Sign out</button>
</form>
{% endblock %}

{% block actions %}
<a class="button" href="#history">Download statement</a>
<a class="button button-primary" href="#profile">Add credit</a>
{% endblock %}

{% block content %}
<div class="stats">
  {{ ui.stat("Balance", ui.amount(balance), "Available for API calls") }}
  {{ ui.stat("Spent today", ui.amount(spent_today), "of a $500.00 daily limit") }}
  {{ ui.stat("Spent this month", ui.amount(spent_month), "Since " ~ (month_start | utc_date)) }}
  {{ ui.stat("Auto-recharge", ui.badge("On", "success"), "Adds $100.00 below $20.00") }}
</div>

<section class="section" id="history">
  {{ ui.table(history_columns, history, caption="Balance history") }}
</section>

<section class="section">
  {% call(key) ui.table(key_columns, keys, caption="API keys") %}
  <td>{{ key.name }}</td>
  <td><code>{{ key.prefix }}…</code></td>
  <td>{{ ui.timestamp(key.created, date_only=true) }}</td>
  <td>{{ ui.badge(key.status, "success" if key.status == "Active" else "neutral") }}</td>
  {% endcall %}
</section>

<section class="section">
  {{ ui.table(invoice_columns, [], caption="Invoices", empty="No invoices yet.") }}
</section>

<section class="section" id="profile">
  {% call ui.card("Billing profile", "Shown on your invoices and receipts.") %}
  <form class="form" method="post" action="/" novalidate>
    {{ ui.csrf_input(csrf_token) }}
    {{ ui.field("company", "Company name", values.company, errors.company,
                autocomplete="organization", required=true) }}
    {{ ui.field("email", "Billing email", values.email, errors.email, type="email",
                hint="Invoices and receipts are sent here.", autocomplete="email") }}
    {{ ui.select("country", "Country", countries, values.country, errors.country) }}
    <div class="form-actions">
      <button class="button button-primary" type="submit">Save profile</button>
    </div>
  </form>
  {% endcall %}
</section>
{% endblock %}
"""


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC)


HISTORY = [
    {
        "at": at(7, 9, 14),
        "description": "Card top-up, Visa •••• 4242",
        "kind": ("Credit", "success"),
        "amount": 100_000_000,
        "balance": 1_234_560_000,
    },
    {
        "at": at(7, 0),
        "description": "API usage, 6 Dec 2026 (18,204 calls)",
        "kind": ("Usage", "neutral"),
        "amount": -41_873_100,
        "balance": 1_134_560_000,
    },
    {
        "at": at(6, 15, 42),
        "description": "Refund of a failed upstream call",
        "kind": ("Refund", "info"),
        "amount": 1_250_000,
        "balance": 1_176_433_100,
    },
    {
        "at": at(6, 3, 5),
        "description": "Auto-recharge: the card was declined",
        "kind": ("Failed", "danger"),
        "amount": None,
        "balance": 1_175_183_100,
    },
    {
        "at": at(5, 0),
        "description": "Adjustment by support: duplicate top-up reversed",
        "kind": ("Adjustment", "warning"),
        "amount": -100_000_000,
        "balance": 1_175_183_100,
    },
]

NAV = {  # this person sees neither Members nor API keys' own page
    "overview": "/",
    "balance_history": "/#history",
    "billing_profile": "/#profile",
    "tax_settings": "/tax",
    "settings": "/settings",
}


def context(account_name: str) -> dict[str, Any]:
    return {
        "account": {"name": account_name},
        "accounts": [("acc_1", account_name), ("acc_2", "Acme Research (test)")],
        "nav": NAV,
        "section": "overview",
        "csrf_token": CSRF,
        "balance": 1_234_560_000,
        "spent_today": 18_420_000,
        "spent_month": 731_904_250,
        "month_start": at(1, 0),
        "history_columns": [
            ("at", "Date", "datetime"),
            ("description", "Description", "text"),
            ("kind", "Type", "badge"),
            ("amount", "Amount", "signed_money"),
            ("balance", "Balance", "money"),
        ],
        "history": HISTORY,
        "key_columns": [
            ("name", "Name", "text"),
            ("prefix", "Key", "text"),
            ("created", "Created", "date"),
            ("status", "Status", "text"),
        ],
        "keys": [
            {
                "name": "Production",
                "prefix": "mk_live_4Fq2",
                "created": at(2, 10),
                "status": "Active",
            },
            {"name": "Staging", "prefix": "mk_live_9xTa", "created": at(1, 8), "status": "Revoked"},
        ],
        "invoice_columns": [("number", "Number", "text"), ("total", "Total", "money")],
        "countries": [("", "Choose a country"), ("DE", "Germany"), ("NZ", "New Zealand")],
        "values": {"company": "", "email": "", "country": ""},
        "errors": {"company": None, "email": None, "country": None},
        "flashes": [],
    }


def sample_app(account_name: str) -> web.Application:
    """The sample page; a POST checks the form the way a portal page would and shows it
    again with what was sent and what is wrong."""
    app = web.Application()
    setup_templates(app, extra=jinja2.DictLoader({"sample.html": SAMPLE}))

    async def show(request: web.Request) -> web.Response:
        return aiohttp_jinja2.render_template("sample.html", request, context(account_name))

    async def save(request: web.Request) -> web.Response:
        form: Mapping[str, str] = {k: str(v) for k, v in (await request.post()).items()}
        assert form["csrf_token"] == CSRF
        values = {name: form.get(name, "") for name in ("company", "email", "country")}
        errors = {
            "company": None if values["company"].strip() else "Enter your company's name.",
            "email": None if "@" in values["email"] else "Enter an email like name@example.com.",
            "country": None,
        }
        page = context(account_name) | {"values": values, "errors": errors}
        if any(errors.values()):
            page["flashes"] = [("error", "The billing profile was not saved: see below.")]
            status = 422
        else:
            page["flashes"] = [("success", "Billing profile saved.")]
            status = 200
        return aiohttp_jinja2.render_template("sample.html", request, page, status=status)

    app.router.add_get("/", show)
    app.router.add_post("/", save)
    return app


@asynccontextmanager
async def served(account_name: str = "Acme Robotics") -> AsyncIterator[str]:
    async with TestServer(sample_app(account_name), host="127.0.0.1") as server:
        yield str(server.make_url("/"))


async def test_the_nav_marks_the_current_section_and_shows_only_the_listed_ones(
    page: Page,
) -> None:
    async with served() as url:
        await page.goto(url)
        nav = page.get_by_role("navigation", name="Sections")
        links = nav.get_by_role("link")
        await expect(links).to_have_text(
            ["Overview", "Balance history", "Billing profile", "Tax settings", "Settings"]
        )
        await expect(nav.get_by_role("link", name="Overview")).to_have_attribute(
            "aria-current", "page"
        )
        await expect(nav.locator("[aria-current]")).to_have_count(1)
        await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
        await expect(page).to_have_title("Overview · Meter")


async def test_the_stylesheet_is_applied(page: Page) -> None:
    async with served() as url:
        await page.goto(url)
        # Chromium's own defaults are a white body in Times, a black link-blue nav link.
        await expect(page.locator("body")).to_have_css("background-color", "rgb(246, 247, 249)")
        current = page.get_by_role("link", name="Overview")
        await expect(current).to_have_css("color", "rgb(79, 70, 229)")
        await expect(current).to_have_css("background-color", "rgb(238, 240, 254)")
        family = await page.locator("body").evaluate("e => getComputedStyle(e).fontFamily")
        assert family.startswith("system-ui")
        await expect(page.locator(".table tbody tr").nth(1)).to_have_css(
            "background-color",
            "rgb(249, 250, 251)",  # zebra rows
        )
        company = page.get_by_label("Company name")
        await company.focus()
        await expect(company).to_have_css("border-color", "rgb(79, 70, 229)")  # focus state


async def test_money_time_badges_and_an_empty_table_read_as_a_person_expects(
    page: Page,
) -> None:
    async with served() as url:
        await page.goto(url)
        balance = page.locator(".stat").filter(has_text="Balance")
        await expect(balance.locator(".stat-value")).to_have_text("$1,234.56")
        history = page.get_by_role("table", name="Balance history")
        first = history.locator("tbody tr").first
        await expect(first.locator("td")).to_have_text(
            [
                "7 Dec 2026, 09:14 UTC",
                "Card top-up, Visa •••• 4242",
                "Credit",
                "+$100.00",
                "$1,234.56",
            ]
        )
        await expect(first.locator("time")).to_have_attribute("datetime", "2026-12-07T09:14:00Z")
        await expect(history.locator("tbody tr").nth(1).locator(".amount")).to_have_text(
            ["-$41.87", "$1,134.56"]
        )
        await expect(history.locator("tbody tr").nth(3).locator("td").nth(3)).to_have_text("—")
        keys = page.get_by_role("table", name="API keys")
        await expect(keys.locator("tbody tr").first.locator("td")).to_have_text(
            ["Production", "mk_live_4Fq2…", "2 Dec 2026", "Active"]
        )
        await expect(page.get_by_role("table", name="Invoices").locator("tbody")).to_have_text(
            "No invoices yet."
        )


async def test_a_field_error_is_shown_beside_its_field_and_the_value_is_kept(
    page: Page,
) -> None:
    async with served() as url:
        await page.goto(url)
        email = page.get_by_label("Billing email")
        await expect(email).not_to_have_attribute("aria-invalid", "true")
        await page.get_by_label("Company name").fill("Acme <Robotics> & Co")
        await email.fill("billing.acme.example")
        await page.get_by_label("Country").select_option("NZ")
        await page.get_by_role("button", name="Save profile").click()

        await expect(page.get_by_role("alert")).to_have_text(
            "The billing profile was not saved: see below."
        )
        email = page.get_by_label("Billing email")
        await expect(email).to_have_attribute("aria-invalid", "true")
        await expect(email).to_have_accessible_description(
            "Enter an email like name@example.com. Invoices and receipts are sent here."
        )
        await expect(email).to_have_value("billing.acme.example")
        await expect(page.get_by_label("Company name")).to_have_value("Acme <Robotics> & Co")
        await expect(page.get_by_label("Company name")).not_to_have_attribute(
            "aria-invalid", "true"
        )
        await expect(page.get_by_label("Country")).to_have_value("NZ")
        await expect(page.locator('input[name="csrf_token"]').first).to_have_value(CSRF)

        error = page.locator("#field-email-error")
        await expect(error).to_have_css("color", "rgb(180, 35, 24)")
        field_box, error_box = await email.bounding_box(), await error.bounding_box()
        assert field_box and error_box
        under = error_box["y"] - (field_box["y"] + field_box["height"])
        assert 0 <= under <= 12, (field_box, error_box)  # right under the input
        assert abs(error_box["x"] - field_box["x"]) <= 1, (field_box, error_box)
        await screenshot(page, "portal-look-form-error")


async def test_names_are_shown_as_text_never_run(page: Page) -> None:
    name = '<script>window.ran = 1</script><img src=x onerror="window.ran = 2">'
    async with served(name) as url:
        await page.goto(url)
        await expect(page.locator(".account-name")).to_have_text(name)
        assert await page.evaluate("document.querySelectorAll('script, img').length") == 0
        assert await page.evaluate("window.ran === undefined")


async def test_on_a_phone_the_nav_sits_above_the_page(new_page: NewPage) -> None:
    width, height = PHONE
    page = await new_page(width=width, height=height)
    async with served() as url:
        await page.goto(url)
        nav_box = await page.get_by_role("navigation", name="Sections").bounding_box()
        main_box = await page.get_by_role("main").bounding_box()
        assert nav_box and main_box
        assert nav_box["y"] + nav_box["height"] <= main_box["y"] + 1, (nav_box, main_box)
        assert nav_box["width"] >= width - 1 and main_box["width"] >= width - 1
        # nothing wider than the screen but what scrolls inside its own box (tables)
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
        await screenshot(page, "portal-look-phone")


async def test_on_a_desktop_the_nav_is_beside_the_page(page: Page) -> None:
    async with served() as url:
        await page.goto(url)
        nav_box = await page.get_by_role("navigation", name="Sections").bounding_box()
        main_box = await page.get_by_role("main").bounding_box()
        assert nav_box and main_box
        assert nav_box["x"] + nav_box["width"] <= main_box["x"] + 1, (nav_box, main_box)
        assert abs(nav_box["y"] - main_box["y"]) <= 1
        await screenshot(page, "portal-look")
