"""The admin API agrees with its own OpenAPI document: schemathesis against the real server.

The admin app runs in this test's event loop over real Redis and Postgres; the
schemathesis CLI runs as a child process against it, over every operation and all
its phases (coverage, fuzzing, stateful) and checks: status codes, content types,
response headers and schemas, schema-violating requests refused, schema-valid ones
accepted (``admin_openapi_checks``: the rules the document states in words, strict
integers among them), no 5xx, auth enforced. Seeded, one worker, no example database:
the same cases each run. Before the run the test registers an account's tax ids, whose
check digits the fuzzer would not find (``admin_openapi.toml`` names them).

``ADMIN_FUZZ_EXAMPLES`` sets the examples per operation (``make fuzz`` runs many).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from test_admin_access import invoice_of
from test_admin_support import AUTH, NOW, RETURN_URLS, TOKEN, Clock, settings, stripe_env

from admin import operations as openapi
from admin.app import create_app

EXAMPLES = int(os.environ.get("ADMIN_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("ADMIN_FUZZ_SEED", "23"))
# positive_data_acceptance: replaced by admin_openapi_checks' documented_positive_data_acceptance.
# object_level_authorization: needs two principals; the admin API has one token.
EXCLUDED_CHECKS = "positive_data_acceptance,object_level_authorization"
HOOKS = "admin_openapi_checks"
DOCUMENTED_MISMATCH = {
    "POST /v1/accounts/{account_id}/credits",
    "POST /v1/accounts/{account_id}/tax-ids",
    "POST /v1/accounts/{account_id}/portal-sessions",
    # The purchase bounds are the deployment's; the generator's amounts mostly miss them.
    "POST /v1/accounts/{account_id}/purchases",
    "PUT /v1/accounts/{account_id}/auto-recharge",
    # A percentage threshold needs a daily budget (a rule across fields).
    "PUT /v1/accounts/{account_id}/spend-management",
    # A confirmed SetupIntent is made by a browser at Stripe, beyond the generator.
    "POST /v1/accounts/{account_id}/payment-methods",
    # A host the generator writes does not resolve to a public address, here or anywhere.
    "POST /v1/accounts/{account_id}/webhook-endpoints",
}
# Operations whose objects the fuzzer cannot make: a portal session names a member
# and an allowed return URL, and a card a browser's SetupIntent. Every call it sends
# is answered 404 or 422, which the other checks judge.
UNREACHABLE = {
    "POST /v1/accounts/{account_id}/payment-methods",
    "POST /v1/accounts/{account_id}/portal-sessions",
}
CONFIG = Path(__file__).with_name("admin_openapi.toml")
# The default body limit: every body the schemas allow fits (test_admin_support's 2 KiB
# would refuse a valid 200-character name written as JSON escapes with 413).
BODY_LIMIT = "65536"
# A public address written as one: saved without a DNS lookup (nothing is sent).
HOOK_URL = "https://1.1.1.1/meter-hooks"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def operations(doc: dict[str, Any]) -> int:
    return sum(1 for ops in doc["paths"].values() for method in ops if method in METHODS)


async def seed(server: TestServer, pool: asyncpg.Pool, double: Any) -> dict[str, str]:
    """An account with two tax ids, a member, a token and two webhook endpoints (a
    delivery of one), one with two cards and a purchase, and one to close, for the
    operations on one (the config names them)."""
    values = ("DE136695976", "DE129273398")
    async with ClientSession(headers=AUTH) as http:

        async def post(path: str, body: dict[str, Any]) -> str:
            async with http.post(server.make_url(path), json=body) as response:
                assert response.status == 201, await response.text()
                created: str = (await response.json())["id"]
                return created

        account = await post("/v1/accounts", {"name": "Tax ids"})
        delete, verify = [
            await post(
                f"/v1/accounts/{account}/tax-ids",
                {"type": "eu_vat", "country": "DE", "value": value},
            )
            for value in values
        ]
        paying = await post("/v1/accounts", {"name": "Paying"})
        await post(f"/v1/accounts/{paying}/setup-intents", {})  # makes its Stripe customer
        customer = await pool.fetchval(
            "select stripe_customer_id from payment_customers where account_id = $1", paying
        )
        cards = [double.attach_card(customer) for _ in range(2)]
        async with http.get(server.make_url(f"/v1/accounts/{paying}/payment-methods")) as r:
            assert r.status == 200
        bought = await post(
            f"/v1/accounts/{paying}/purchases", {"amount": 50_000_000, "idempotency_key": "f"}
        )
        closing = await post("/v1/accounts", {"name": "Closing"})
        hooks = f"/v1/accounts/{account}/webhook-endpoints"
        endpoint, doomed = [await post(hooks, {"url": HOOK_URL}) for _ in range(2)]
        delivery = await post(f"{hooks}/{endpoint}/test", {})
        member = await post(
            f"/v1/accounts/{account}/members",
            {"email": "member@fuzz.test", "name": "Member", "role": "viewer"},
        )
        token = await post(f"/v1/accounts/{account}/tokens", {"name": "fuzz", "role": "viewer"})
    # Given up by the sender: a retry sends it again (then it is pending: 409).
    await pool.execute(
        "update notification_deliveries set status = 'failed' where id = $1", delivery
    )
    return {
        "ADMIN_FUZZ_ACCOUNT": account,
        "ADMIN_FUZZ_TAX_ID_DELETE": delete,
        "ADMIN_FUZZ_TAX_ID_VERIFY": verify,
        "ADMIN_FUZZ_PAYING": paying,
        # The default card: set default keeps it so; deleting it is refused (409) while
        # the other card remains, so neither operation runs out of objects.
        "ADMIN_FUZZ_CARD": cards[0],
        "ADMIN_FUZZ_PAYMENT": bought,
        "ADMIN_FUZZ_CLOSING": closing,
        "ADMIN_FUZZ_HOOK": endpoint,
        "ADMIN_FUZZ_HOOK_DELETE": doomed,
        "ADMIN_FUZZ_DELIVERY": delivery,
        # Revoking is idempotent, and opt-ins are replaced: neither runs out.
        "ADMIN_FUZZ_MEMBER": member,
        "ADMIN_FUZZ_TOKEN": token,
        "ADMIN_FUZZ_INVOICE": await invoice_of(pool, account),
    }


async def test_the_admin_api_agrees_with_its_openapi_document(
    redis_url: str,
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    stripe: Any,
) -> None:
    # Payments against the Stripe double, so the payment routes run for real.
    config = settings(
        redis_url, database_url, METER_ADMIN_MAX_BODY_BYTES=BODY_LIMIT, **stripe_env(stripe)
    )
    server = TestServer(create_app(config, clock=Clock()))
    await server.start_server()
    report = tmp_path / "report.json"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run"),
        str(server.make_url("/v1/openapi.json")),
        *("--header", f"Authorization: Bearer {TOKEN}"),
        *("--checks", "all", "--exclude-checks", EXCLUDED_CHECKS),
        *("--max-examples", str(EXAMPLES), "--seed", str(SEED)),
        *("--workers", "1", "--generation-database", "none", "--no-color"),
        *("--report", "json", "--report-json-path", str(report)),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent),
        "SCHEMATHESIS_HOOKS": HOOKS,
        "ADMIN_FUZZ_TODAY": datetime.fromtimestamp(NOW, UTC).date().isoformat(),
        "ADMIN_FUZZ_RETURN_URLS": RETURN_URLS,
        "ADMIN_FUZZ_PURCHASE_BOUNDS": f"{config.credit_purchase_min},{config.credit_purchase_max}",
    }
    try:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            env.update(await seed(server, pool, stripe))
        finally:
            await pool.close()
        with caplog.at_level(logging.WARNING):
            child = await asyncio.create_subprocess_exec(
                *command,
                cwd=tmp_path,  # schemathesis' own files land there, not in the repository
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await child.communicate()
    finally:
        await server.close()
    text = output.decode(errors="replace")
    run = orjson.loads(report.read_bytes())
    cases = run["test_cases"]
    print(
        f"\nschemathesis {run['schemathesis_version']}: {cases['generated']} cases,"
        f" {run['operations']['tested']} operations, {run['running_time']:.1f} s,"
        f" {EXAMPLES} examples per operation, seed {SEED}"
    )
    assert child.returncode == 0 and run["failures"] == [] and run["errors"] == [], text[-20_000:]
    # Every operation but GET /v1/openapi.json, which schemathesis reads rather than tests.
    assert run["operations"]["tested"] == operations(openapi.document()) - 1, text[-5_000:]
    ran = {name: phase["status"] for name, phase in run["phases"].items() if name != "examples"}
    assert ran == {"coverage": "success", "fuzzing": "success", "stateful": "success"}, ran
    assert cases["generated"] >= 20 * run["operations"]["tested"], cases  # it ran for real
    # No pattern it could not read, no operation it could not reach, ... Only the
    # operations whose every positive case the documented rules may refuse can have had
    # all of them refused (validation_mismatch): the generator writes most integers as
    # 5.0, and a tax id's check digits are out of its reach (see admin_openapi_checks).
    warnings = {name: set(labels) for name, labels in run["warnings"].items() if labels}
    assert warnings.pop("validation_mismatch", set()) <= DOCUMENTED_MISMATCH, run["warnings"]
    assert warnings.pop("missing_test_data", set()) <= UNREACHABLE, run["warnings"]
    assert warnings == {}, run["warnings"]
    # The server logged nothing at ERROR: no traceback for any request the fuzzer sent,
    # the NUL-in-a-header probe included (a warning line, see admin.protocol_log).
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
