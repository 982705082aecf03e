"""Header rules and refusal mapping, pure: pairs in, pairs out. No fixtures."""

from __future__ import annotations

import pytest

from gateway import errors, headers
from gateway.identity import REPEATED_KEY, presented_key
from meter.live_state import Admission, Call
from meter.money import SECONDS_PER_DAY, Outcome, Signal
from meter.problems import TYPE_BASE

CALL = Call(3, "acct_9", "proj_9", "key_9", "chat", 100)


def names(pairs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [n.lower() for n, _ in pairs]


def b(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


def test_to_upstream_strips_hop_by_hop_key_and_spoofed_meter_headers() -> None:
    incoming = [
        ("Host", "gw.example"),
        ("Connection", "keep-alive, X-Custom-Hop"),
        ("X-Custom-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic x"),
        ("Proxy-Anything", "y"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Expect", "100-continue"),
        ("Authorization", "Bearer mtr_secret"),
        ("X-API-Key", "mtr_secret"),
        ("X-Meter-Account", "someone-else"),
        ("x-meter-charged", "0"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "spoofed"),
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
        ("Accept", "a/b"),
        ("Accept", "c/d"),
    ]
    out = headers.to_upstream(b(incoming), client_ip="10.0.0.7", proto=b"http", call=CALL)
    assert out == b([
        ("Content-Type", "application/json"),
        ("Accept", "a/b"),
        ("Accept", "c/d"),
        ("X-Forwarded-For", "10.0.0.7"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "gw.example"),
        ("X-Meter-Account", "acct_9"),
        ("X-Meter-Project", "proj_9"),
        ("X-Meter-Key-Id", "key_9"),
        ("X-Meter-Route", "chat"),
    ])  # fmt: skip


def test_forwarded_for_appends_to_the_incoming_chain() -> None:
    out = headers.to_upstream(
        [(b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2")],
        client_ip="3.3.3.3",
        proto=b"http",
        call=CALL,
    )
    assert (b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2, 3.3.3.3") in out
    assert b"x-forwarded-host" not in names(out)


def test_to_client_strips_hop_by_hop_and_upstream_meter_headers() -> None:
    upstream = [
        ("Content-Type", "text/plain"),
        ("Connection", "close, X-Secret"),
        ("X-Secret", "s"),
        ("Keep-Alive", "timeout=1"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authenticate", "Basic"),
        ("Upgrade", "websocket"),
        ("Trailer", "X-T"),
        ("X-Meter-Charged", "0"),
        ("X-Credits-Available", "999999"),
        ("X-Daily-Limit-Remaining", "999999"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("X-Units-Used", "7"),
        ("Content-Length", "5"),
        ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("Server", "upstream/1.0"),
    ]
    out = headers.to_client(b(upstream), headers.metering(70, 930, None))
    assert out == b([
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("X-Units-Used", "7"),
        ("X-Meter-Charged", "70"),
        ("X-Credits-Available", "930"),
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (None, [("X-Meter-Charged", "5"), ("X-Credits-Available", "10")]),
        (
            0,
            [
                ("X-Meter-Charged", "5"),
                ("X-Credits-Available", "10"),
                ("X-Daily-Limit-Remaining", "0"),
            ],
        ),
    ],
)
def test_metering_headers(limit: int | None, expected: list[tuple[str, str]]) -> None:
    assert headers.metering(5, 10, limit) == b(expected)


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ({"Authorization": "Bearer mtr_a"}, "mtr_a"),
        ({"Authorization": "bearer   mtr_a "}, "mtr_a"),
        ({"X-API-Key": " mtr_b"}, "mtr_b"),
        ({"Authorization": "Bearer mtr_a", "X-API-Key": "mtr_b"}, "mtr_a"),
        ({"Authorization": "Basic dXNlcjpwdw==", "X-API-Key": "mtr_b"}, "mtr_b"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, None),
        ({}, None),
    ],
)
def test_presented_key(given: dict[str, str], key: str | None) -> None:
    assert presented_key(b(list(given.items()))) == key


@pytest.mark.parametrize(
    "pairs",
    [
        [(b"x-api-key", b"mtr_1"), (b"X-API-Key", b"mtr_2"), (b"authorization", b"Basic x")],
        [(b"Authorization", b"Bearer mtr_1"), (b"authorization", b"Bearer mtr_1")],
        [(b"Authorization", b"Basic x"), (b"X-API-Key", b"mtr_1"), (b"Authorization", b"Bearer")],
    ],
)
def test_a_key_header_given_twice_presents_no_key(pairs: list[tuple[bytes, bytes]]) -> None:
    assert presented_key(pairs) is REPEATED_KEY


def test_find_and_encode() -> None:
    pairs = [(b"A", b"1"), (b"content-LENGTH", b"5"), (b"a", b"2")]
    assert headers.find(pairs, b"a") == b"1"
    assert headers.find(pairs, b"content-length") == b"5"
    assert headers.find(pairs, b"b") is None
    assert headers.encode(pairs) == b"A: 1\r\ncontent-LENGTH: 5\r\na: 2\r\n"


def admission(
    outcome: Outcome, available: int = 0, left: int | None = None, event_id: str = ""
) -> Admission:
    return Admission(outcome, 0, available, left, Signal.NONE, event_id)


NOON = 20_000 * SECONDS_PER_DAY + 43_200.5
LINKS = errors.PortalLinks.under("https://billing.example.com/")


@pytest.mark.parametrize(
    ("outcome", "status", "slug"),
    [
        (Outcome.NO_CREDIT, 402, "insufficient-credits"),
        (Outcome.DAILY_LIMIT, 429, "daily-limit-reached"),
        (Outcome.SUSPENDED, 403, "account-suspended"),
        (Outcome.KEY_REVOKED, 403, "api-key-revoked"),
        (Outcome.UNKNOWN_ACCOUNT, 503, "account-state-missing"),
        (Outcome.UNKNOWN_KEY, 401, "unknown-api-key"),
        (Outcome.PAYMENT_METHOD_REQUIRED, 402, "payment-method-required"),
    ],
)
def test_refusal_for_each_outcome(outcome: Outcome, status: int, slug: str) -> None:
    refusal = errors.for_outcome(admission(outcome), 100, NOON, LINKS)
    assert refusal is not None
    assert (refusal.status, refusal.type, refusal.reason) == (status, TYPE_BASE + slug, slug)


def test_admitted_is_no_refusal() -> None:
    assert errors.for_outcome(admission(Outcome.ADMITTED), 100, NOON, LINKS) is None


def test_daily_limit_retry_after_runs_to_midnight_utc() -> None:
    refusal = errors.for_outcome(admission(Outcome.DAILY_LIMIT, 0, 40), 100, NOON, LINKS)
    assert refusal is not None
    assert refusal.headers["Retry-After"] == "43200"  # 11:59:59.5 left, rounded up
    assert refusal.body()["retry_after"] == 43200
    assert refusal.body()["limit_remaining"] == 40


def test_portal_links_are_built_under_the_portal_url() -> None:
    assert (
        errors.PortalLinks(
            "https://billing.example.com/credits", "https://billing.example.com/payment-methods"
        )
        == LINKS
    )


@pytest.mark.parametrize(
    ("rch", "auto_recharge", "detail"),
    [
        ("i", "in_flight", "An auto-recharge is in progress; retry in a few seconds."),
        ("d", "declined", "Your last auto-recharge was declined; update your payment method."),
        ("p", "paused", "Auto-recharge is paused after repeated failures; "),
        ("", None, "Add credits"),
    ],
)
def test_no_credit_says_what_auto_recharge_is_doing(
    rch: str, auto_recharge: str | None, detail: str
) -> None:
    refusal = errors.for_outcome(admission(Outcome.NO_CREDIT, 40, None, rch), 100, NOON, LINKS)
    assert refusal is not None
    body = refusal.body()
    assert body.get("auto_recharge") == auto_recharge
    assert body["detail"].startswith(detail)
    assert (body["price"], body["available"]) == (100, 40)
    assert body["add_credits_url"] == "https://billing.example.com/credits"


def test_payment_method_required_links_to_the_page() -> None:
    refusal = errors.for_outcome(admission(Outcome.PAYMENT_METHOD_REQUIRED), 100, NOON, LINKS)
    assert refusal is not None
    body = refusal.body()
    assert body["title"] == "Add a payment method to use the API"
    assert body["add_payment_method_url"] == "https://billing.example.com/payment-methods"


def test_401_carries_www_authenticate() -> None:
    assert errors.MissingKey().headers["WWW-Authenticate"].startswith("Bearer")


def test_every_refusal_slug_is_unique() -> None:
    def subclasses(cls: type[errors.Refusal]) -> list[type[errors.Refusal]]:
        out = []
        for sub in cls.__subclasses__():
            out += [sub, *subclasses(sub)]
        return out

    slugs = [c.slug for c in subclasses(errors.Refusal)]
    assert len(slugs) == len(set(slugs)) > 15
