"""A webhook delivery: Standard Webhooks signatures, and the SSRF guard at connect time.

A real receiver on loopback verifies each delivery with the ``standardwebhooks``
library. The guard is proven against that same receiver: refused without
``allow_private``, by IP literal and by a name that resolves to loopback.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook

from notifications.webhook_delivery import address_problem, deliver, session, url_problem

BODY = b'{"type":"credits.added","data":{"amount":5000000}}'


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class Receiver:
    def __init__(self) -> None:
        self.seen: list[tuple[bytes, dict[str, str]]] = []
        self.answer = 204
        self.headers: dict[str, str] = {}

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((await request.read(), dict(request.headers)))
        return web.Response(status=self.answer, headers=self.headers, text="thanks")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, TestServer]]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield r, server
    await server.close()


async def test_a_delivery_is_signed_and_verifies_with_either_secret_of_a_rotation(
    receiver: tuple[Receiver, TestServer],
) -> None:
    r, server = receiver
    old, new = new_secret(), new_secret()
    async with session(allow_private=True) as http:
        attempt = await deliver(
            http, str(server.make_url("/hook")), [old, new], "msg_1", BODY, allow_private=True
        )
    assert (attempt.ok, attempt.status, attempt.error) == (True, 204, None)
    [(body, headers)] = r.seen
    assert body == BODY and headers["webhook-id"] == "msg_1"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == orjson.loads(BODY)
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(body, headers)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_the_guard_refuses_the_same_receiver_without_allow_private(
    receiver: tuple[Receiver, TestServer], host: str
) -> None:
    r, server = receiver
    url = f"http://{host}:{server.port}/hook"
    async with session(allow_private=False) as http:
        attempt = await deliver(http, url, [new_secret()], "msg_2", BODY, allow_private=False)
    assert not attempt.ok and attempt.status is None
    assert attempt.error is not None and "target refused" in attempt.error
    assert "loopback" in attempt.error
    assert r.seen == []


@pytest.mark.parametrize(("status", "ok"), [(200, True), (302, False), (500, False), (410, False)])
async def test_only_a_2xx_succeeds_and_redirects_are_not_followed(
    receiver: tuple[Receiver, TestServer], status: int, ok: bool
) -> None:
    r, server = receiver
    r.answer = status
    r.headers = {"Location": "http://169.254.169.254/latest"} if status == 302 else {}
    async with session(allow_private=True) as http:
        attempt = await deliver(
            http, str(server.make_url("/hook")), [new_secret()], "m", BODY, allow_private=True
        )
    assert (attempt.ok, attempt.status) == (ok, status)
    assert len(r.seen) == 1  # the redirect's target was never asked
    if status == 302:
        assert "not followed" in (attempt.error or "")


async def test_retry_after_is_read_on_429_and_503(receiver: tuple[Receiver, TestServer]) -> None:
    r, server = receiver
    r.answer, r.headers = 429, {"Retry-After": "120"}
    async with session(allow_private=True) as http:
        attempt = await deliver(
            http, str(server.make_url("/hook")), [new_secret()], "m", BODY, allow_private=True
        )
    assert (attempt.status, attempt.retry_after) == (429, 120.0)


@pytest.mark.parametrize(
    ("address", "private_allowed", "refused"),
    [
        ("93.184.216.34", False, False),
        ("2606:2800:220:1:248:1893:25c8:1946", False, False),
        ("127.0.0.1", False, True),
        ("10.1.2.3", False, True),
        ("172.16.0.1", False, True),
        ("192.168.1.1", False, True),
        ("169.254.1.1", False, True),
        ("100.64.0.1", False, True),
        ("224.0.0.1", False, True),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("::1", False, True),
        ("fe80::1", False, True),
        ("fc00::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("::ffff:10.0.0.1", False, True),
        ("169.254.169.254", True, True),  # metadata: refused even on-premises
        ("fd00:ec2::254", True, True),
        ("10.1.2.3", True, False),
        ("127.0.0.1", True, False),
    ],
)
def test_which_addresses_are_refused(address: str, private_allowed: bool, refused: bool) -> None:
    why = address_problem(ipaddress.ip_address(address), private_allowed)
    assert (why is not None) == refused, why


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example.com/x", None),
        ("ftp://hooks.example.com/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("https:///nohost", "no host"),
        ("http://example.com:99999/", "not a URL"),
    ],
)
def test_which_urls_are_refused_before_any_lookup(url: str, problem: str | None) -> None:
    got = url_problem(url)
    assert (got is None) if problem is None else (problem in (got or ""))


@pytest.mark.parametrize(
    ("case", "verifies"),
    [
        ("as_sent", True),
        ("tampered_body", False),
        ("wrong_secret", False),
        ("stale_timestamp", False),
        ("future_timestamp", False),
        ("old_secret_during_rotation", True),
        ("new_secret_during_rotation", True),
    ],
)
async def test_signature_vectors(
    receiver: tuple[Receiver, TestServer], case: str, verifies: bool
) -> None:
    """What a receiver's ``standardwebhooks`` check accepts of what we sent, and what
    it refuses: another body, another secret, a timestamp 10 minutes off either way."""
    r, server = receiver
    old, new = new_secret(), new_secret()
    rotating = case.endswith("rotation")
    offset = {"stale_timestamp": -600, "future_timestamp": 600}.get(case, 0)
    async with session(allow_private=True) as http:
        attempt = await deliver(
            http,
            str(server.make_url("/hook")),
            [new, old] if rotating else [new],
            "msg_v",
            BODY,
            allow_private=True,
            now=datetime.now(UTC) + timedelta(seconds=offset),
        )
    assert attempt.ok
    [(body, headers)] = r.seen
    if case == "tampered_body":
        body = body.replace(b"5000000", b"9000000")
    secret = {"wrong_secret": new_secret(), "old_secret_during_rotation": old}.get(case, new)
    try:
        Webhook(secret).verify(body, headers)
        ok = True
    except Exception:  # standardwebhooks' WebhookVerificationError
        ok = False
    assert ok is verifies
