"""One typed, frozen settings object, read from the environment once at start-up.

Nothing else in the project reads ``os.environ``: services receive a ``Settings``
from their wiring point. Every field is one line: its variable, its default.
A bad value stops start-up with one line naming the variable (``ConfigError``).
A few variables have another accepted name (``aliases``); both set and different
is a ``ConfigError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from email.errors import MessageError
from email.headerregistry import AddressHeader, HeaderRegistry
from typing import Any, TypeVar
from urllib.parse import urlsplit

from meter.keys import SETTLED_TTL_SECONDS
from meter.redis_address import RedisAddress
from meter.smtp_address import SmtpAddress

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration variable has a value we cannot use; the message names it."""


class Secret:
    """A string that never reaches a log or a repr."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip().replace("_", ""))
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parts = urlsplit(raw.strip())
        if parts.scheme not in schemes or (not parts.hostname and not parts.path):
            raise ValueError(f"must be a {' or '.join(schemes)} URL")
        return raw.strip()

    return parse


def _redis_url(raw: str) -> str:
    value: str = _url("redis", "rediss", "unix")(raw)
    RedisAddress.from_url(value)  # its TLS options too (ValueError says which)
    return value


def _smtp_url(raw: str) -> Secret:
    value = raw.strip()
    if value:
        SmtpAddress.from_url(value)  # ValueError says what is wrong
    return Secret(value)


def _mail_from(raw: str) -> str:
    value = raw.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must be one address on one line, like meter <billing@example.com>")
    try:
        header = HeaderRegistry()("from", value)
    except (IndexError, ValueError, MessageError):  # the stdlib parser's ways to give up
        raise ValueError("must be one address, like billing@example.com") from None
    addresses = header.addresses if isinstance(header, AddressHeader) else ()
    if (
        header.defects
        or len(addresses) != 1
        or not addresses[0].username
        or not addresses[0].domain
    ):
        raise ValueError("must be one address, like billing@example.com or meter <billing@...>")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _str(raw: str) -> str:
    return raw.strip()


def _optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _optional_path(raw: str) -> str | None:
    value = raw.strip()
    if value and not os.path.isfile(value):
        raise ValueError(f"no such file: {value}")
    return value or None


def _secret(raw: str) -> Secret:
    return Secret(raw.strip())


CRASH_POINTS = ("after_read", "mid_insert", "before_commit", "after_commit", "after_trim")
PAYMENT_CRASH_POINTS = (
    "payment_before_stripe",  # a payment is written, Stripe not yet called
    "payment_after_stripe",  # Stripe charged, its answer not yet recorded
)
CLOSE_CRASH_POINTS = (
    "close_after_lines",  # an invoice's lines computed, nothing written yet
    "close_before_number",  # a draft is being finalized, no number taken yet
    "close_after_number",  # its number taken, the finalization not committed
)
DELIVERY_CRASH_POINTS = (
    "delivery_before_send",  # a delivery is claimed, nothing sent yet
    "delivery_after_send",  # the receiver answered, the answer not yet recorded
)
GRANT_CRASH_POINTS = (
    "expiry_before_commit",  # a grant's expiry entry written, not yet committed
    "expiry_after_commit",  # committed, Redis not yet told
)


def _days(raw: str) -> tuple[int, ...]:
    days = tuple(int(d) for d in raw.split(",") if d.strip())
    if any(d < 0 or d > 365 for d in days) or list(days) != sorted(days):
        raise ValueError("days from 0 to 365, in increasing order (1,3,5,7)")
    return days


def _return_urls(raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
            raise ValueError(f"{url!r} is not an http(s) origin or URL prefix")
    return urls


def _crash_points(raw: str) -> frozenset[str]:
    points = frozenset(p.strip() for p in raw.split(",") if p.strip())
    unknown = points - {
        *CRASH_POINTS,
        *PAYMENT_CRASH_POINTS,
        *DELIVERY_CRASH_POINTS,
        *CLOSE_CRASH_POINTS,
        *GRANT_CRASH_POINTS,
    }
    if unknown:
        raise ValueError(f"unknown crash point(s) {', '.join(sorted(unknown))}")
    return points


def _shown(raw: str) -> str:
    """``raw`` for an error message: a URL's password masked."""
    try:
        parts = urlsplit(raw)
        password = parts.password
    except ValueError:
        return raw
    if not password:
        return raw
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def _env(
    name: str, default: str, parse: Callable[[str], Any], *, aliases: tuple[str, ...] = ()
) -> Any:
    return field(
        default=None,
        metadata={"env": name, "default": default, "parse": parse, "aliases": aliases},
    )


def _raw(
    env: Mapping[str, str], name: str, aliases: tuple[str, ...], default: str
) -> tuple[str, str]:
    """(the variable given, its value) of ``name`` or its aliases, which must agree."""
    given = [(n, env[n]) for n in (name, *aliases) if n in env]
    if not given:
        return name, default
    first_name, first = given[0]
    for other_name, other in given[1:]:
        if other.strip() != first.strip():
            raise ConfigError(f"{first_name} and {other_name} differ: set one of them")
    return first_name, first


@dataclass(frozen=True, slots=True)
class Settings:
    # Where things live.
    redis_url: str = _env("METER_REDIS_URL", "redis://127.0.0.1:6379/0", _redis_url)
    database_url: str = _env(
        "METER_DATABASE_URL",
        "postgresql://meter@127.0.0.1:5432/meter",
        _url("postgresql", "postgres"),
    )
    upstream_url: str = _env("METER_UPSTREAM_URL", "http://127.0.0.1:9000", _url("http"))
    # Listeners.
    gateway_host: str = _env("METER_GATEWAY_HOST", "127.0.0.1", _str)
    gateway_port: int = _env("METER_GATEWAY_PORT", "8080", _int(0, 65535))
    # The gateway's /metrics, /healthz and /readyz for operators, apart from the customer-
    # facing port (which answers /_meter/healthz and /_meter/readyz, never metrics). Worker
    # i of METER_GATEWAY_WORKERS listens on this port + i; 0: a free port (tests).
    gateway_metrics_host: str = _env("METER_GATEWAY_METRICS_HOST", "127.0.0.1", _str)
    gateway_metrics_port: int = _env("METER_GATEWAY_METRICS_PORT", "9464", _int(0, 65535))
    # Gateway worker processes sharing the port (SO_REUSEPORT); 1 = serve in-process.
    gateway_workers: int = _env("METER_GATEWAY_WORKERS", "1", _int(1, 256))
    admin_host: str = _env("METER_ADMIN_HOST", "127.0.0.1", _str)
    admin_port: int = _env("METER_ADMIN_PORT", "8081", _int(0, 65535))
    # The bootstrap operator token of the admin API (empty: the admin API refuses to start).
    admin_token: Secret = _env("METER_ADMIN_TOKEN", "", _secret)
    # Price table (TOML); unset: the built-in default table.
    prices_path: str | None = _env("METER_PRICES", "", _optional_path)
    # Number of shards; fixed for the life of a deployment (accounts keep theirs).
    shards: int = _env("METER_SHARDS", "16", _int(1, 16384))
    # Hot-path limits and timeouts.
    max_body_bytes: int = _env("METER_MAX_BODY_BYTES", "10485760", _int(0, 1 << 40))
    upstream_timeout: float = _env("METER_UPSTREAM_TIMEOUT", "60", _float(0.001, 3600))
    upstream_connect_timeout: float = _env(
        "METER_UPSTREAM_CONNECT_TIMEOUT", "5", _float(0.001, 600)
    )
    upstream_pool_size: int = _env("METER_UPSTREAM_POOL_SIZE", "256", _int(1, 65536))
    redis_timeout: float = _env("METER_REDIS_TIMEOUT", "1.0", _float(0.001, 60))
    refund_upstream_errors: bool = _env("METER_REFUND_UPSTREAM_ERRORS", "true", _bool)
    # A refund whose script call failed (Redis away) is tried again for this long, at most
    # half the life of settle.lua's once-per-call marker (gateway/refund_retry.py).
    refund_retry_seconds: float = _env(
        "METER_REFUND_RETRY_SECONDS", "3600", _float(0.01, SETTLED_TTL_SECONDS / 2)
    )
    # A folder of the gateway's own where refunds waiting for Redis are also written, so
    # that a worker stopped or killed before Redis is back leaves them to the next one
    # (gateway/refund_spool.py). Empty: memory only.
    refund_spool_dir: str | None = _env("METER_REFUND_SPOOL_DIR", "", _optional_str)
    key_cache_size: int = _env("METER_KEY_CACHE_SIZE", "100000", _int(1, 100_000_000))
    # How long an unknown key stays refused without a new Redis lookup.
    negative_key_ttl: float = _env("METER_NEGATIVE_KEY_TTL", "1.0", _float(0, 60))
    shutdown_grace: float = _env("METER_SHUTDOWN_GRACE", "10", _float(0, 3600))
    # Pooled upstream connections idle this long are closed.
    upstream_idle_timeout: float = _env("METER_UPSTREAM_IDLE_TIMEOUT", "30", _float(0.01, 3600))
    # Admissions of one loop pass go to Redis as one script call per shard, or ("true")
    # one for all shards (a single Redis only: Redis Cluster refuses it with CROSSSLOT and
    # every call fails closed, 503); "auto" asks Redis whether it is a cluster node.
    admit_cross_shard: str = _env(
        "METER_ADMIT_CROSS_SHARD", "auto", _choice("auto", "true", "false")
    )
    # Raw server limits: idle keep-alive connections are closed after METER_KEEPALIVE_TIMEOUT;
    # a request head, each wait for request body bytes and each stalled response write get
    # METER_CLIENT_TIMEOUT (408 for a slow head, the connection cut otherwise).
    keepalive_timeout: float = _env("METER_KEEPALIVE_TIMEOUT", "60", _float(0.01, 3600))
    client_timeout: float = _env("METER_CLIENT_TIMEOUT", "30", _float(0.01, 3600))
    max_url_bytes: int = _env("METER_MAX_URL_BYTES", "8192", _int(64, 1 << 20))  # 414 above
    max_header_bytes: int = _env("METER_MAX_HEADER_BYTES", "16384", _int(256, 1 << 24))  # 431
    max_headers: int = _env("METER_MAX_HEADERS", "100", _int(4, 10_000))  # 431 above
    # Client connections open at once (raw server); more are closed as they come. 0: as
    # many as the open-files limit leaves once the upstream pool and Redis have theirs.
    max_client_connections: int = _env("METER_MAX_CLIENT_CONNECTIONS", "0", _int(0, 10_000_000))
    # Admin API.
    admin_max_body_bytes: int = _env("METER_ADMIN_MAX_BODY_BYTES", "65536", _int(1024, 1 << 30))
    sync_interval: float = _env("METER_SYNC_INTERVAL", "2.0", _float(0.01, 3600))
    # Billing portal (portal/): its own listener, facing customers.
    portal_host: str = _env("METER_PORTAL_HOST", "127.0.0.1", _str)
    portal_port: int = _env("METER_PORTAL_PORT", "8083", _int(0, 65535))
    # The portal as customers reach it: the base of the sign-in links the admin API mints
    # and of the pages the gateway's 402s link to (/credits, /payment-methods).
    portal_public_url: str = _env(
        "METER_PORTAL_PUBLIC_URL",
        "http://127.0.0.1:8083",
        _url("http", "https"),
        aliases=("METER_PORTAL_URL",),
    )
    # Comma list of origins or URL prefixes a link's return_url may point at; empty: none.
    portal_return_urls: tuple[str, ...] = _env("METER_PORTAL_RETURN_URLS", "", _return_urls)
    # The session cookie's Secure flag; false only for a portal served over plain local http.
    portal_cookie_secure: bool = _env("METER_PORTAL_COOKIE_SECURE", "true", _bool)
    portal_link_ttl: float = _env("METER_PORTAL_LINK_TTL", "300", _float(1, 86_400))
    portal_session_idle: float = _env("METER_PORTAL_SESSION_IDLE", "3600", _float(1, 86_400))
    portal_session_max: float = _env("METER_PORTAL_SESSION_MAX", "43200", _float(1, 604_800))
    # Payments through Stripe (payments/). Without a secret key the payment routes answer
    # 503 payments-not-configured; METER_STRIPE_API_BASE points at a test double.
    stripe_secret_key: Secret = _env("METER_STRIPE_SECRET_KEY", "", _secret)
    stripe_publishable_key: str = _env("METER_STRIPE_PUBLISHABLE_KEY", "", _str)
    stripe_webhook_secret: Secret = _env("METER_STRIPE_WEBHOOK_SECRET", "", _secret)
    stripe_api_base: str = _env(
        "METER_STRIPE_API_BASE", "https://api.stripe.com", _url("http", "https")
    )
    # Where the portal loads Stripe.js from (the test double serves a stand-in).
    stripe_js_url: str = _env(
        "METER_STRIPE_JS_URL", "https://js.stripe.com/v3/", _url("http", "https")
    )
    stripe_timeout: float = _env("METER_STRIPE_TIMEOUT", "20", _float(0.1, 120))
    # A credit purchase's bounds in micros, inclusive (seed 001: $5 to $5,000).
    credit_purchase_min: int = _env("METER_CREDIT_PURCHASE_MIN", "5000000", _int(10_000, 10**15))
    credit_purchase_max: int = _env("METER_CREDIT_PURCHASE_MAX", "5000000000", _int(10_000, 10**15))
    # Auto-recharge pauses after this many failures in a row (declines, authentication).
    recharge_max_failures: int = _env("METER_RECHARGE_MAX_FAILURES", "3", _int(1, 100))
    # The first back-off after a failed recharge; each further failure doubles it.
    recharge_backoff: float = _env("METER_RECHARGE_BACKOFF", "3600", _float(0.01, 7 * 86_400))
    # Who calls Stripe for a payment holds it this long; then the sweep may take it over.
    payment_lease: float = _env("METER_PAYMENT_LEASE", "60", _float(0.05, 3600))
    # How often the ledger worker's payments loop sweeps unsettled payments and levels.
    payments_sweep_interval: float = _env("METER_PAYMENTS_SWEEP_INTERVAL", "10", _float(0.01, 3600))
    # The ledger worker's grant expiry sweep wakes at the next expiry it knows of, and
    # looks again at least this often (for a grant another process wrote meanwhile).
    grant_sweep_interval: float = _env("METER_GRANT_SWEEP_INTERVAL", "60", _float(0.01, 3600))
    # A purchase waiting for 3-D Secure is canceled after this long.
    payment_action_timeout: float = _env(
        "METER_PAYMENT_ACTION_TIMEOUT", "86400", _float(1, 30 * 86_400)
    )
    # Email (notifications/): where mail is handed over (meter/smtp_address.py: smtp://,
    # smtp+starttls://, smtps://, credentials percent-encoded); empty: no mail is sent.
    smtp_url: Secret = _env("METER_SMTP_URL", "", _smtp_url)
    mail_from: str = _env("METER_MAIL_FROM", "meter <billing@localhost>", _mail_from)
    # Webhook targets may be private, loopback or link-local addresses (on-premises use);
    # cloud metadata addresses stay refused (notifications/webhook_delivery.py).
    webhook_allow_private: bool = _env("METER_WEBHOOK_ALLOW_PRIVATE", "false", _bool)
    # Who sends a delivery (webhook or email) holds it this long; a worker killed
    # mid-send leaves it to another after that. More than a send's 15 s timeout.
    delivery_lease: float = _env("METER_DELIVERY_LEASE", "60", _float(0.05, 3600))
    # Billing periods and invoices (billing/). A period is a UTC calendar month from
    # this day of the month (1 to 28).
    billing_anchor_day: int = _env("METER_BILLING_ANCHOR_DAY", "1", _int(1, 28))
    # A closed period's invoice stays a draft this long (late corrections), then is
    # finalized: numbered, frozen, charged.
    invoice_grace: float = _env("METER_INVOICE_GRACE", "3600", _float(0, 30 * 86_400))
    # Invoice numbers: this prefix and a sequence without gaps (INV-000001, ...).
    invoice_prefix: str = _env("METER_INVOICE_PREFIX", "INV-", _str)
    # An open invoice is due this many days after it is finalized (net N).
    invoice_net_days: int = _env("METER_INVOICE_NET_DAYS", "14", _int(0, 365))
    # An open invoice is charged at finalization, then again this many days after it
    # while it fails; after the last, the overdue policy: block_overage (the overage
    # line is zero until it is paid) or suspend.
    invoice_retry_days: tuple[int, ...] = _env("METER_INVOICE_RETRY_DAYS", "1,3,5,7", _days)
    invoice_overdue: str = _env(
        "METER_INVOICE_OVERDUE", "block_overage", _choice("block_overage", "suspend")
    )
    # The seller on every invoice, frozen at finalization.
    seller_name: str = _env("METER_SELLER_NAME", "Meter", _str)
    seller_address: str = _env("METER_SELLER_ADDRESS", "", _str)
    seller_tax_id: str = _env("METER_SELLER_TAX_ID", "", _str)
    # Ledger worker (see ledger/worker.py). A batch closes at METER_LEDGER_BATCH events or
    # METER_LEDGER_MAX_WAIT seconds after its first event, whichever comes first.
    ledger_host: str = _env("METER_LEDGER_HOST", "127.0.0.1", _str)
    ledger_port: int = _env("METER_LEDGER_PORT", "8082", _int(0, 65535))
    ledger_batch: int = _env("METER_LEDGER_BATCH", "5000", _int(1, 1_000_000))
    ledger_max_wait: float = _env("METER_LEDGER_MAX_WAIT", "0.2", _float(0.001, 60))
    # How often a worker tries to take shards it does not own (a dead worker's shards move
    # within about this long).
    ledger_lock_retry: float = _env("METER_LEDGER_LOCK_RETRY", "1.0", _float(0.01, 600))
    # Seconds between the worker's own reconcile passes over its shards; 0 = never.
    reconcile_interval: float = _env("METER_RECONCILE_INTERVAL", "60", _float(0, 86_400))
    # Raw usage events are kept this many UTC days (older day partitions are dropped).
    usage_retention_days: int = _env("METER_USAGE_RETENTION_DAYS", "90", _int(1, 36_500))
    # Tests only: kill the worker with SIGKILL at these points (comma list of after_read,
    # mid_insert, before_commit, after_commit, after_trim) with this probability each time.
    ledger_crash_points: frozenset[str] = _env("METER_LEDGER_CRASH_POINTS", "", _crash_points)
    ledger_crash_probability: float = _env("METER_LEDGER_CRASH_PROBABILITY", "0", _float(0, 1))
    log_level: str = _env("METER_LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"))
    # Where `meter dev` keeps its Redis and Postgres data.
    data_dir: str = _env("METER_DATA_DIR", ".data", _str)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            parse = f.metadata["parse"]
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            name, raw = _raw(env, f.metadata["env"], f.metadata["aliases"], f.metadata["default"])
            try:
                values[f.name] = parse(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{name}={_shown(raw)!r}: {exc}") from None
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(changes)
        return Settings(**current)


def documented() -> list[tuple[str, str]]:
    """(variable, default) for every setting and alias, in declaration order: the README
    table."""
    return [
        (name, f.metadata["default"])
        for f in fields(Settings)
        for name in (f.metadata["env"], *f.metadata["aliases"])
    ]
