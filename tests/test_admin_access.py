"""Who may do what, proven over every route: the route x role matrix and the audit log.

Two accounts, A and B, each with a project, a key, members, a token and a tax id.
Every declared operation is called by every kind of principal (the bootstrap
token, an operator and an operator-readonly token, and A's owner, admin, billing
and viewer tokens) on A's objects and on B's. What ``admin.access`` says a
principal may do must succeed (2xx); anything else must be refused: 404 for
another account's objects (as if they did not exist), 403 otherwise. Every write
that succeeds must have written an audit entry, and none may carry a secret.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from test_admin_support import AUTH, RETURN_URL, TOKEN, call, start, stripe_env

from admin import operations
from admin.access import ROLE_PERMISSIONS, ActorType, Permission, Principal, Role, require_member
from admin.declared import Operation
from admin.errors import Forbidden, NotFound
from billing import periods
from billing.invoices import close_account

_counter = itertools.count()
# A public address written as one: saved without a DNS lookup (nothing is sent here).
HOOK_URL = "https://1.1.1.1/meter-hooks"


def unique(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


@dataclass
class World:
    client: TestClient[Any, Any]
    pool: asyncpg.Pool
    objects: dict[str, dict[str, str]]  # "A"/"B" -> path parameter -> id
    tokens: dict[str, tuple[Role, str | None]]  # bearer token -> (role, its account or None)
    double: Any  # the Stripe double


async def _paying(
    client: TestClient[Any, Any], pool: asyncpg.Pool, double: Any, aid: str
) -> dict[str, str]:
    """A card (the default) and a $5 purchase on it: what the payment routes act on."""
    await call(client, "POST", f"/v1/accounts/{aid}/setup-intents", status=201)
    customer = await pool.fetchval(
        "select stripe_customer_id from payment_customers where account_id = $1", aid
    )
    card = double.attach_card(customer)
    await call(client, "GET", f"/v1/accounts/{aid}/payment-methods", status=200)
    bought = await call(
        client,
        "POST",
        f"/v1/accounts/{aid}/purchases",
        {"amount": 5_000_000, "idempotency_key": "matrix"},
        status=201,
    )
    return {"payment_method_id": card, "payment_id": bought["id"]}


async def _account(client: TestClient[Any, Any], name: str) -> dict[str, str]:
    account = await call(client, "POST", "/v1/accounts", {"name": name}, status=201)
    aid = account["id"]
    project = await call(
        client, "POST", f"/v1/accounts/{aid}/projects", {"name": "web"}, status=201
    )
    key = await call(client, "POST", f"/v1/projects/{project['id']}/keys", status=201)
    owner = await call(
        client,
        "POST",
        f"/v1/accounts/{aid}/members",
        {"email": f"owner@{name}.test", "name": "Owner", "role": "owner"},
        status=201,
    )
    tax = await call(
        client,
        "POST",
        f"/v1/accounts/{aid}/tax-ids",
        {"type": "gb_vat", "country": "GB", "value": "GB980780684"},
        status=201,
    )
    endpoint = await call(
        client, "POST", f"/v1/accounts/{aid}/webhook-endpoints", {"url": HOOK_URL}, status=201
    )
    delivery = await call(
        client, "POST", f"/v1/accounts/{aid}/webhook-endpoints/{endpoint['id']}/test", status=201
    )
    return {
        "account_id": aid,
        "project_id": project["id"],
        "key_id": key["id"],
        "member_id": owner["id"],
        "tax_id": tax["id"],
        "endpoint_id": endpoint["id"],
        "delivery_id": delivery["id"],
    }


async def invoice_of(pool: asyncpg.Pool, account_id: str) -> str:
    """The account's invoice for the current period, as its close writes it."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        invoice = await close_account(conn, account_id, periods.at(now), now=now, grace=0)
    assert invoice is not None
    return invoice.id


async def _token(client: TestClient[Any, Any], path: str, role: str) -> dict[str, Any]:
    token: dict[str, Any] = await call(
        client, "POST", path, {"name": f"{role} bot", "role": role}, status=201
    )
    return token


@pytest.fixture
async def world(
    aiohttp_client: Any, redis_url: str, database_url: str, stripe: Any
) -> AsyncIterator[World]:
    client = await start(aiohttp_client, redis_url, database_url, **stripe_env(stripe))
    objects = {"A": await _account(client, "a"), "B": await _account(client, "b")}
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    plan = await call(client, "POST", "/v1/plans", {"name": "Matrix", "monthly_fee": 0}, status=201)
    for side in ("A", "B"):
        aid = objects[side]["account_id"]
        objects[side].update(await _paying(client, pool, stripe, aid))
        objects[side]["invoice_id"] = await invoice_of(pool, aid)
        objects[side]["plan_id"] = plan["id"]
        await call(
            client, "PUT", f"/v1/accounts/{aid}/subscription", {"plan_id": plan["id"]}, status=201
        )
    for side in ("A", "B"):
        token = await _token(client, f"/v1/accounts/{objects[side]['account_id']}/tokens", "viewer")
        objects[side]["token_id"] = token["id"]
    tokens: dict[str, tuple[Role, str | None]] = {TOKEN: (Role.OPERATOR, None)}
    for role in (Role.OPERATOR, Role.OPERATOR_READONLY):
        tokens[(await _token(client, "/v1/operator-tokens", role))["token"]] = (role, None)
    a = objects["A"]["account_id"]
    for role in (Role.OWNER, Role.ADMIN, Role.BILLING, Role.VIEWER):
        tokens[(await _token(client, f"/v1/accounts/{a}/tokens", role))["token"]] = (role, a)
    try:
        yield World(client, pool, objects, tokens, stripe)
    finally:
        await pool.close()


# -- what each write needs: a valid body, and fresh objects where the write uses one up ---

Prepare = Callable[[World, dict[str, str]], Awaitable[dict[str, str]]]


async def _fresh_member(w: World, ids: dict[str, str]) -> dict[str, str]:
    member = await call(
        w.client,
        "POST",
        f"/v1/accounts/{ids['account_id']}/members",
        {"email": unique("m") + "@x.test", "name": "M", "role": "viewer"},
        status=201,
    )
    return {**ids, "member_id": member["id"]}


async def _fresh_token(w: World, ids: dict[str, str]) -> dict[str, str]:
    token = await _token(w.client, f"/v1/accounts/{ids['account_id']}/tokens", "viewer")
    return {**ids, "token_id": token["id"]}


async def _fresh_operator_token(w: World, ids: dict[str, str]) -> dict[str, str]:
    token = await _token(w.client, "/v1/operator-tokens", "operator-readonly")
    return {**ids, "token_id": token["id"]}


async def _fresh_key(w: World, ids: dict[str, str]) -> dict[str, str]:
    key = await call(w.client, "POST", f"/v1/projects/{ids['project_id']}/keys", status=201)
    return {**ids, "key_id": key["id"]}


async def _fresh_tax_id(w: World, ids: dict[str, str]) -> dict[str, str]:
    await _no_tax_ids(w, ids)
    tax = await call(
        w.client,
        "POST",
        f"/v1/accounts/{ids['account_id']}/tax-ids",
        {"type": "no_vat", "country": "NO", "value": "NO 995 525 828 MVA"},
        status=201,
    )
    return {**ids, "tax_id": tax["id"]}


async def _no_tax_ids(w: World, ids: dict[str, str]) -> dict[str, str]:
    await w.pool.execute(
        "update tax_ids set deleted_at = now() where account_id = $1 and id <> $2",
        ids["account_id"],
        ids["tax_id"],
    )
    return ids


async def _fresh_account(w: World, ids: dict[str, str]) -> dict[str, str]:
    """Closing is final: close a throwaway account, not the one every token lives on."""
    return await _account(w.client, unique("c"))


async def _fresh_card(w: World, ids: dict[str, str]) -> dict[str, str]:
    """A second card, not the default, to delete."""
    customer = await w.pool.fetchval(
        "select stripe_customer_id from payment_customers where account_id = $1",
        ids["account_id"],
    )
    card = w.double.attach_card(customer)
    await call(w.client, "GET", f"/v1/accounts/{ids['account_id']}/payment-methods", status=200)
    return {**ids, "payment_method_id": card}


OWED = itertools.count(1)


async def _owed_invoice(w: World, ids: dict[str, str]) -> dict[str, str]:
    """An open invoice owing $1 of an earlier period, as a close and finalization leave
    it (the close itself is tested in test_invoices)."""
    n = next(OWED)
    invoice_id = f"inv_matrix{n}"
    await w.pool.execute(
        "insert into invoices (id, account_id, period_start, period_end, status, number,"
        " usage_amount, credits_applied, amount_due, balance_at_end, finalize_after,"
        " finalized_at) values ($1, $2, $3, $4, 'open', $5, 1000000, 0, 1000000, -1000000,"
        " now(), now())",
        invoice_id,
        ids["account_id"],
        date(1990 + n // 12, n % 12 + 1, 1),
        date(1990 + (n + 1) // 12, (n + 1) % 12 + 1, 1),
        f"MATRIX-{n}",
    )
    return {**ids, "invoice_id": invoice_id}


async def _confirmed_setup(w: World, ids: dict[str, str]) -> dict[str, str]:
    """A SetupIntent confirmed with a new card, as the browser leaves it."""
    customer = await w.pool.fetchval(
        "select stripe_customer_id from payment_customers where account_id = $1",
        ids["account_id"],
    )
    client = w.double.client()
    pm = client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2032, "cvc": "123"},
        }
    )
    setup = client.v1.setup_intents.create({"customer": customer, "usage": "off_session"})
    client.v1.setup_intents.confirm(setup.id, {"payment_method": pm.id})
    return {**ids, "setup_intent_id": str(setup.id)}


async def _gate_open(w: World, ids: dict[str, str]) -> dict[str, str]:
    await w.pool.execute(
        "update accounts set require_payment_method = false where id = $1", ids["account_id"]
    )
    return ids


async def _fresh_endpoint(w: World, ids: dict[str, str]) -> dict[str, str]:
    endpoint = await call(
        w.client,
        "POST",
        f"/v1/accounts/{ids['account_id']}/webhook-endpoints",
        {"url": HOOK_URL},
        status=201,
    )
    return {**ids, "endpoint_id": endpoint["id"]}


async def _failed_delivery(w: World, ids: dict[str, str]) -> dict[str, str]:
    """A delivery the sender gave up on: what a retry sends again."""
    path = f"/v1/accounts/{ids['account_id']}/webhook-endpoints/{ids['endpoint_id']}/test"
    delivery = await call(w.client, "POST", path, status=201)
    await w.pool.execute(
        "update notification_deliveries set status = 'failed', finished_at = now() where id = $1",
        delivery["id"],
    )
    return {**ids, "delivery_id": delivery["id"]}


async def _withdrawn_plan(w: World, ids: dict[str, str]) -> dict[str, str]:
    """The plan no longer offered, so offering it again is a change (and audited)."""
    await call(w.client, "PATCH", f"/v1/plans/{ids['plan_id']}", {"active": False}, status=200)
    return ids


def _then(method: str, action: str) -> Prepare:
    """A state change first, so that the write under test changes something."""

    async def prepare(w: World, ids: dict[str, str]) -> dict[str, str]:
        await call(w.client, method, f"/v1/accounts/{ids['account_id']}/{action}", status=200)
        return ids

    return prepare


def _credit() -> dict[str, Any]:
    return {"amount": 1, "description": "grant", "idempotency_key": unique("k")}


BODIES: dict[str, Callable[[], Any]] = {
    "createAccount": lambda: {"name": "New"},
    "renameAccount": lambda: {"name": unique("Renamed ")},
    "setLimits": lambda: {
        "overage_line": 0,
        "daily_hard_limit": 5_000_000,
        "daily_notify_threshold": None,
    },
    "addCredit": _credit,
    "createProject": lambda: {"name": "p"},
    "addMember": lambda: {"email": unique("n") + "@x.test", "name": "N", "role": "viewer"},
    "changeMember": lambda: {"role": "billing"},
    "createAccountToken": lambda: {"name": "t", "role": "viewer"},
    "createOperatorToken": lambda: {"name": "o", "role": "operator-readonly"},
    "putBillingProfile": lambda: {"legal_name": unique("Acme "), "country": "DE"},
    "addTaxId": lambda: {"type": "eu_vat", "country": "DE", "value": "DE136695976"},
    "createPurchase": lambda: {"amount": 5_000_000, "idempotency_key": unique("p")},
    "refundPayment": lambda: {"amount": 10_000, "force": True, "idempotency_key": unique("r")},
    "refundPurchase": lambda: {"amount": 10_000, "force": True, "idempotency_key": unique("r")},
    "putAutoRecharge": lambda: {"enabled": False, "threshold": 1_000_000, "amount": 5_000_000},
    "putSpendManagement": lambda: {
        "enabled": True,
        "daily_budget": 10_000_000,
        "notify_thresholds": [{"percent": 80}, {"amount": 2_000_000}],
    },
    "putPaymentSettings": lambda: {"require_payment_method": True},
    "payInvoice": lambda: {},
    "createPlan": lambda: {"name": unique("Plan "), "monthly_fee": 0},
    "updatePlan": lambda: {"active": True},
    "createWebhookEndpoint": lambda: {"url": HOOK_URL, "event_types": ["balance.low"]},
    "changeWebhookEndpoint": lambda: {"description": unique("Hooks ")},
    "putNotificationSettings": lambda: {"invoice_email": unique("invoices") + "@x.test"},
    "putNotificationSubscriptions": lambda: {"event_types": ["balance.low", "credits.added"]},
}
# Bodies naming an object of the account the call is on.
BODIES_OF: dict[str, Callable[[dict[str, str]], Any]] = {
    "putSubscription": lambda ids: {"plan_id": ids["plan_id"]},
    "createPortalSession": lambda ids: {"member_id": ids["member_id"], "return_url": RETURN_URL},
    "addPaymentMethod": lambda ids: {"setup_intent_id": ids["setup_intent_id"]},
}
# Writes without a body.
NO_BODY = {
    "voidInvoice",
    "markInvoiceUncollectible",
    "suspendAccount",
    "resumeAccount",
    "requestDeletion",
    "cancelDeletion",
    "closeAccount",
    "createApiKey",
    "revokeApiKey",
    "removeMember",
    "revokeAccountToken",
    "revokeOperatorToken",
    "deleteTaxId",
    "verifyTaxId",
    "createSetupIntent",
    "setDefaultPaymentMethod",
    "deletePaymentMethod",
    "deleteWebhookEndpoint",
    "rotateWebhookSecret",
    "retryWebhookDelivery",
    "sendWebhookTest",
}
PREPARE: dict[str, Prepare] = {
    "changeMember": _fresh_member,
    "removeMember": _fresh_member,
    "revokeAccountToken": _fresh_token,
    "revokeOperatorToken": _fresh_operator_token,
    "revokeApiKey": _fresh_key,
    "deleteTaxId": _fresh_tax_id,
    "addTaxId": _no_tax_ids,
    "closeAccount": _fresh_account,
    "suspendAccount": _then("POST", "resume"),
    "resumeAccount": _then("POST", "suspend"),
    "requestDeletion": _then("POST", "deletion-request/cancel"),
    "cancelDeletion": _then("POST", "deletion-request"),
    "deletePaymentMethod": _fresh_card,
    "addPaymentMethod": _confirmed_setup,
    "putPaymentSettings": _gate_open,
    "deleteWebhookEndpoint": _fresh_endpoint,
    "retryWebhookDelivery": _failed_delivery,
    "payInvoice": _owed_invoice,
    "updatePlan": _withdrawn_plan,
    "voidInvoice": _owed_invoice,
    "markInvoiceUncollectible": _owed_invoice,
}


def _path(op: Operation, ids: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], op.path)


def allowed(op: Operation, role: Role, own: str | None, target: str | None) -> bool:
    """What the matrix expects: the role holds the permission, and the object is its own."""
    if op.permission not in ROLE_PERMISSIONS[role]:
        return False
    if own is None or op.any_principal:  # an operator, or a route of no account
        return True
    return op.scope is not None and target == own


async def test_the_route_role_matrix_has_no_unauthorised_success(world: World) -> None:
    w = world
    writes = [op for op in operations.ALL if op.writes]
    given = {*BODIES, *BODIES_OF, *NO_BODY}
    missing = [op.op_id for op in writes if op.op_id not in given]
    assert missing == [], f"add a body for {missing}"
    outcomes: list[tuple[str, str, str, int, bool]] = []
    wrong: list[str] = []
    for op in operations.ALL:
        for token, (role, own) in w.tokens.items():
            for side in ("A", "B"):
                ids = dict(w.objects[side])
                if op.op_id in PREPARE:
                    ids = await PREPARE[op.op_id](w, ids)
                target = ids["account_id"] if op.scope is not None else None
                body = BODIES[op.op_id]() if op.op_id in BODIES else None
                if op.op_id in BODIES_OF:
                    body = BODIES_OF[op.op_id](ids)
                audit_before = await w.pool.fetchval("select count(*) from audit_log")
                response = await w.client.request(
                    op.method,
                    _path(op, ids),
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                )
                text = await response.text(errors="replace")  # a PDF is not UTF-8
                expected = allowed(op, role, own, target)
                status = response.status
                outcomes.append((op.op_id, role, side, status, expected))
                if expected:
                    if not 200 <= status < 300:
                        wrong.append(f"{op.op_id} by {role} on {side}: {status} {text[:200]}")
                    elif op.writes:
                        audit_after = await w.pool.fetchval("select count(*) from audit_log")
                        if audit_after <= audit_before:
                            wrong.append(f"{op.op_id} by {role} wrote no audit entry")
                else:
                    other = own is not None and op.scope is not None and target != own
                    want = 404 if other else 403
                    if status != want:
                        wrong.append(f"{op.op_id} by {role} on {side}: {status}, want {want}")
                    if await w.pool.fetchval("select count(*) from audit_log") != audit_before:
                        wrong.append(f"{op.op_id} by {role} on {side}: refused, yet audited")
    assert wrong == [], "\n".join(wrong)
    refused = [o for o in outcomes if not o[4]]
    assert len(refused) > 200 and all(o[3] in (403, 404) for o in refused)
    # Both halves of the matrix were exercised, for every operation.
    for op in operations.ALL:
        mine = [o for o in outcomes if o[0] == op.op_id]
        assert any(o[4] for o in mine), f"{op.op_id}: nobody may call it?"
    # The webhook secrets made and rotated above never reached the audit log.
    logged = " ".join(map(str, await w.pool.fetch("select before, after from audit_log")))
    kept = await w.pool.fetch("select secret, previous_secret from webhook_endpoints")
    made = [v for r in kept for v in (r["secret"], r["previous_secret"]) if v]
    assert len(made) > 10 and not any(secret in logged for secret in made)


async def test_no_audit_entry_carries_a_secret(world: World) -> None:
    rows = await world.pool.fetch("select before, after from audit_log")
    text = " ".join(str(r["before"]) + str(r["after"]) for r in rows)
    assert len(rows) > 10 and "token_hash" not in text and "key_hash" not in text
    for token in world.tokens:
        assert token not in text
    assert not re.search(r"mta_[0-9A-Za-z]{32}|mtr_[0-9A-Za-z]{38}|whsec_[0-9A-Za-z+/]{20}", text)
    secrets = await world.pool.fetch("select secret, previous_secret from webhook_endpoints")
    assert len(secrets) == 2  # one endpoint of each account
    for r in secrets:
        assert r["secret"] not in text and r["previous_secret"] is None


async def test_an_account_token_lists_only_its_own_account_and_never_all(world: World) -> None:
    (viewer,) = [t for t, (role, _) in world.tokens.items() if role == Role.VIEWER]
    listing = await world.client.get("/v1/accounts", headers={"Authorization": f"Bearer {viewer}"})
    assert listing.status == 403
    b = world.objects["B"]["account_id"]
    other = await world.client.get(
        f"/v1/accounts/{b}", headers={"Authorization": f"Bearer {viewer}"}
    )
    missing = await world.client.get(
        "/v1/accounts/acct_0000000000000000000000", headers={"Authorization": f"Bearer {viewer}"}
    )
    assert other.status == missing.status == 404
    other_body, missing_body = await other.json(), await missing.json()
    assert other_body["title"] == missing_body["title"] and b in other_body["detail"]


async def test_a_revoked_token_is_refused_on_its_next_request(world: World) -> None:
    a = world.objects["A"]["account_id"]
    token = await _token(world.client, f"/v1/accounts/{a}/tokens", "admin")
    headers = {"Authorization": f"Bearer {token['token']}"}
    assert (await world.client.get(f"/v1/accounts/{a}", headers=headers)).status == 200
    await call(world.client, "DELETE", f"/v1/tokens/{token['id']}", status=200)
    refused = await world.client.get(f"/v1/accounts/{a}", headers=headers)
    assert refused.status == 401
    listed = await call(world.client, "GET", f"/v1/accounts/{a}/tokens", status=200)
    (row,) = [t for t in listed["data"] if t["id"] == token["id"]]
    assert row["revoked_at"] is not None and "token" not in row
    assert token["token"].startswith(row["prefix"])


async def test_no_role_hands_out_more_than_it_holds(world: World) -> None:
    a = world.objects["A"]["account_id"]
    by_role = {role: t for t, (role, own) in world.tokens.items() if own}
    admin = {"Authorization": f"Bearer {by_role[Role.ADMIN]}"}
    owner_token = await world.client.post(
        f"/v1/accounts/{a}/tokens", json={"name": "x", "role": "owner"}, headers=admin
    )
    assert owner_token.status == 403
    (readonly,) = [t for t, (role, _) in world.tokens.items() if role == Role.OPERATOR_READONLY]
    escalate = await world.client.post(
        "/v1/operator-tokens",
        json={"name": "x", "role": "operator"},
        headers={"Authorization": f"Bearer {readonly}"},
    )
    assert escalate.status == 403
    # An admin sets the daily hard limit, but the overage line is the provider's credit.
    limits = {"overage_line": 9, "daily_hard_limit": 1, "daily_notify_threshold": None}
    raised = await world.client.put(f"/v1/accounts/{a}/limits", json=limits, headers=admin)
    assert raised.status == 403
    assert (await call(world.client, "GET", f"/v1/accounts/{a}", status=200))["overage_line"] == 0
    assert AUTH  # the bootstrap token still works for everything


@pytest.mark.parametrize(
    ("role", "member", "may"),
    [
        (Role.VIEWER, "mem_me", True),  # one's own opt-ins, whatever the role
        (Role.VIEWER, "mem_other", False),
        (Role.BILLING, "mem_other", True),
        (Role.ADMIN, "mem_other", True),
        (Role.OWNER, "mem_other", True),
    ],
)
def test_a_member_may_change_their_own_opt_ins_and_managers_anyones(
    role: Role, member: str, may: bool
) -> None:
    me = Principal(ActorType.MEMBER, "mem_me", "Me", role, "acct_a")
    if may:
        require_member(me, Permission.NOTIFICATIONS_WRITE, "acct_a", member, "no member")
    else:
        with pytest.raises(Forbidden):
            require_member(me, Permission.NOTIFICATIONS_WRITE, "acct_a", member, "no member")
    with pytest.raises(NotFound):  # another account's member: as if it did not exist
        require_member(me, Permission.NOTIFICATIONS_WRITE, "acct_b", member, "no member")
    token = Principal(ActorType.ACCOUNT_TOKEN, "mem_me", "bot", Role.VIEWER, "acct_a")
    with pytest.raises(Forbidden):  # a token whose id happens to match is no member
        require_member(token, Permission.NOTIFICATIONS_WRITE, "acct_a", "mem_me", "no member")
