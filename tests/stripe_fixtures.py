"""The Stripe test double (meter/stripe_double) for tests: a pytest plugin, loaded by
conftest.py.

    def test_recharge(stripe: StripeDouble) -> None:
        client = stripe.client()
        ...
        assert len(stripe.charges()) == 1

``stripe_double``: one double per session, ``python -m meter.stripe_double`` on a free
loopback port, ready once ``GET /_double/ready`` answers (polled, with a deadline).
``stripe``: the same double emptied before the test (store, webhooks, idempotency
keys, logs, config).
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from stripe import RequestsClient, StripeClient

from meter import parent_death
from meter.local_servers import free_port

READY_SECONDS = 20
_webhook_ids = itertools.count(1)


@dataclass
class StripeDouble:
    url: str
    proc: subprocess.Popen[bytes]
    publishable_key: str = "pk_test_double"
    secret_key: str = "sk_test_double"
    # One connection pool for every client, closed with the double (no socket is left
    # for the garbage collector to warn about).
    http_client: RequestsClient = field(default_factory=RequestsClient)

    @property
    def api_base(self) -> str:
        return self.url

    def client(self, api_key: str | None = None, **options: Any) -> StripeClient:
        """The real ``stripe`` library pointed at the double (``max_network_retries``
        0 unless given: tests see each failure)."""
        options.setdefault("max_network_retries", 0)
        return StripeClient(
            api_key or self.secret_key,
            base_addresses={"api": self.api_base},
            http_client=self.http_client,
            **options,
        )

    def attach_card(self, customer: str, number: str = "4242424242424242") -> str:
        """A card made as Stripe.js would make it, attached to ``customer``: its id."""
        client = self.client()
        pm = client.v1.payment_methods.create(
            {
                "type": "card",
                "card": {"number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"},
                "billing_details": {"name": "Ada Lovelace"},
            }
        )
        client.v1.payment_methods.attach(pm.id, {"customer": customer})
        return str(pm.id)

    def reset(self) -> None:
        self._call("DELETE", "/_double/data")

    def charges(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_double/charges")  # type: ignore[no-any-return]

    def requests(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_double/requests")  # type: ignore[no-any-return]

    def configure(self, **config: Any) -> dict[str, Any]:
        """``idempotency=False``, ``fail_next={"path_prefix": ..., "mode": ...}``."""
        return self._call("POST", "/_double/config", json.dumps(config).encode())  # type: ignore[no-any-return]

    def register_webhook(self, url: str, secret: str, events: list[str] | None = None) -> None:
        form = [("url", url), ("secret", secret)] + [("events[]", e) for e in events or ()]
        body = urllib.parse.urlencode(form).encode()
        self._call("POST", f"/_config/webhooks/wh_{next(_webhook_ids)}", body, form=True)

    def complete_checkout(self, session_id: str) -> dict[str, Any]:
        return self._call("POST", f"/_double/checkout/{session_id}/complete")  # type: ignore[no-any-return]

    def _call(self, method: str, path: str, body: bytes | None = None, form: bool = False) -> Any:
        kind = "application/x-www-form-urlencoded" if form else "application/json"
        request = urllib.request.Request(
            self.url + path, data=body, method=method, headers={"Content-Type": kind}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Stripe double exited ({proc.returncode}): {log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/_double/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.02)  # polling interval, not a synchronisation
    raise RuntimeError(f"the Stripe double was not ready within {READY_SECONDS}s")


@pytest.fixture(scope="session")
def stripe_double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StripeDouble]:
    port = free_port()
    log = tmp_path_factory.mktemp("stripe-double") / "double.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meter.stripe_double",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=parent_death.preexec(signal.SIGTERM),
        )
    double = StripeDouble(f"http://127.0.0.1:{port}", proc)
    try:
        _wait_ready(double.url, proc, log)
        yield double
    finally:
        double.http_client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def stripe(stripe_double: StripeDouble) -> StripeDouble:
    stripe_double.reset()
    return stripe_double
