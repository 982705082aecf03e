"""Realistic mixed traffic through the gateway, with locust's web UI.

Not the throughput harness (that is ``bench.py`` with wrk: a Python load
generator saturates long before the gateway does). This is for watching the
product behave: many customers with Zipf-skewed activity, a mix of free,
fixed-price and variable-cost routes, and some customers at their limits.

    python -m loadtests.seed --admin http://127.0.0.1:8081 --token TOKEN   # or --redis URL
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080

Each simulated user is one client of one customer (customers picked Zipf-
or uniformly from ``--keys-file``). Refusals the customer has earned (402 for
an account out of money, 429 for one at its daily limit) count as successes
and show as their own rows, e.g. ``POST /v1/chat/completions [402]``; anything
else that is not 2xx (or a 402/429 for a customer with plenty of money) is a
failure. Variable-cost calls ask the echo upstream to report ``?units=N``,
which it returns in ``X-Units-Used`` for the gateway to settle.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, task

from loadtests.keyspace import KeyPicker
from loadtests.seed import DEFAULT_OUT

CUSTOMERS: list[tuple[str, str]] = []  # (API key, kind)
PICKER: list[KeyPicker] = []


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--keys-file", default=str(DEFAULT_OUT), help="TSV of key, kind (python -m loadtests.seed)"
    )
    parser.add_argument("--key-distribution", choices=["zipf", "uniform"], default="zipf")


@events.init.add_listener
def _load_customers(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    path = Path(options.keys_file if options else DEFAULT_OUT)
    if not path.exists():
        raise SystemExit(f"locustfile: no {path}; run `python -m loadtests.seed ...` first")
    for line in path.read_text().splitlines():
        key, _, kind = line.partition("\t")
        if key:
            CUSTOMERS.append((key, kind or "normal"))
    distribution = options.key_distribution if options else "zipf"
    PICKER.append(KeyPicker(len(CUSTOMERS), distribution))


class Customer(FastHttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.key, self.kind = CUSTOMERS[PICKER[0]()]
        self.headers = {"Authorization": f"Bearer {self.key}"}

    def _call(self, method: str, path: str, name: str, **kwargs: Any) -> None:
        with self.client.request(
            method, path, name=name, headers=self.headers, catch_response=True, **kwargs
        ) as resp:
            status = resp.status_code
            earned = (status == 402 and self.kind == "low") or (
                status == 429 and self.kind == "capped"
            )
            if 200 <= status < 300:
                resp.success()
            elif earned:
                resp.request_meta["name"] = f"{name} [{status}]"
                resp.success()
            else:
                resp.failure(f"{status} for a {self.kind} customer: {resp.text[:200]!r}")

    @task(6)
    def chat(self) -> None:
        units = max(1, int(random.lognormvariate(5.5, 1.0)))  # median ~250 units, long tail
        body = {
            "model": "m-1",
            "messages": [{"role": "user", "content": "x" * random.randint(10, 2000)}],
        }
        self._call(
            "POST",
            f"/v1/chat/completions?units={min(units, 10_000)}",
            "POST /v1/chat/completions",
            json=body,
        )

    @task(3)
    def embeddings(self) -> None:
        self._call("POST", "/v1/embeddings", "POST /v1/embeddings", json={"input": "hello " * 50})

    @task(2)
    def models(self) -> None:
        self._call("GET", "/v1/models", "GET /v1/models")

    @task(1)
    def other(self) -> None:
        self._call("GET", f"/v1/files/{random.randint(1, 10_000)}", "GET /v1/files/{id}")


class Stranger(FastHttpUser):
    """Now and then, a caller with a mistyped or unknown key: 401 expected."""

    weight = 1
    fixed_count = 1
    wait_time = between(1, 3)

    @task
    def unknown_key(self) -> None:
        with self.client.get(
            "/v1/models",
            name="GET /v1/models (bad key)",
            headers={"Authorization": "Bearer mtr_not-a-real-key"},
            catch_response=True,
        ) as resp:
            if resp.status_code == 401:
                resp.success()
            else:
                resp.failure(f"expected 401, got {resp.status_code}")
