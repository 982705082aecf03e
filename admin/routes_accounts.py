"""Billing accounts: create, list, read, rename, limits, status, deletion, live balance."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from admin import ids, models
from admin.access import Permission as P
from admin.declared import PENDING, Call, Operation, Reply
from admin.provisioning import Written
from admin.records import SUSPENDED, Account
from ledger.errors import BadQuery
from ledger.history_query import page_limit
from meter.money import SECONDS_PER_DAY

DEFAULT_PAGE, MAX_PAGE = 50, 200


def account_reply(written: Written[Account], status: int = 200) -> Reply:
    a = written.value
    return Reply(models.Account.model_validate(a), status, {"ETag": a.etag}, live=written.live)


async def create_account(call: Call[models.NewAccount]) -> Reply:
    written = await call.services.provisioning.create_account(call.actor, call.body)
    return account_reply(written, 201)


async def list_accounts(call: Call[Any]) -> Reply:
    q = call.request.query
    errors: list[tuple[str, str]] = []
    limit = page_limit(q, errors, default=DEFAULT_PAGE, maximum=MAX_PAGE)
    cursor = q.get("cursor", "")
    if "cursor" in q and not ids.well_formed(cursor, ids.ACCOUNT):  # cursor= included
        errors.append(("cursor", "must be the next_cursor of an earlier page"))
    status = q.get("status")
    if status is not None and status not in models.ACCOUNT_STATUSES:
        errors.append(("status", "must be one of " + ", ".join(models.ACCOUNT_STATUSES)))
    name = q.get("name")
    if name is not None and not 1 <= len(name) <= models.MAX_NAME_CHARS:
        errors.append(("name", f"must be 1 to {models.MAX_NAME_CHARS} characters"))
    if errors:
        raise BadQuery(errors)
    found = await call.services.provisioning.accounts(
        after=cursor, limit=limit + 1, name=name, status=status
    )
    page = found[:limit]
    return Reply(
        models.AccountPage(
            data=[models.Account.model_validate(a) for a in page],
            next_cursor=page[-1].id if len(found) > limit else None,
        )
    )


async def get_account(call: Call[Any]) -> Reply:
    account = await call.services.provisioning.account(call.account)
    return account_reply(Written(account, True))


async def rename(call: Call[models.AccountChanges]) -> Reply:
    p = call.services.provisioning
    return account_reply(
        await p.rename(call.actor, call.account, call.body.name, if_match=call.if_match)
    )


async def put_limits(call: Call[models.Limits]) -> Reply:
    p = call.services.provisioning
    return account_reply(
        await p.set_limits(call.actor, call.account, call.body, if_match=call.if_match)
    )


async def suspend(call: Call[Any]) -> Reply:
    return account_reply(
        await call.services.provisioning.set_status(call.actor, call.account, SUSPENDED)
    )


async def resume(call: Call[Any]) -> Reply:
    return account_reply(
        await call.services.provisioning.set_status(call.actor, call.account, "active")
    )


async def request_deletion(call: Call[Any]) -> Reply:
    return account_reply(
        await call.services.provisioning.request_deletion(call.actor, call.account)
    )


async def cancel_deletion(call: Call[Any]) -> Reply:
    return account_reply(await call.services.provisioning.cancel_deletion(call.actor, call.account))


async def close(call: Call[Any]) -> Reply:
    return account_reply(await call.services.provisioning.close(call.actor, call.account))


async def get_balance(call: Call[Any]) -> Reply:
    b = await call.services.provisioning.balance(call.account)
    return Reply(
        models.Balance(
            account_id=b.account_id,
            status=b.status,  # type: ignore[arg-type]
            balance=b.balance,
            overage_line=b.overage_line,
            daily_hard_limit=b.daily_hard_limit,
            daily_notify_threshold=b.daily_notify_threshold,
            spent_today=b.spent_today,
            limit_remaining=b.limit_remaining,
            available=b.available,
            day=datetime.fromtimestamp(b.day * SECONDS_PER_DAY, UTC).date(),
        )
    )


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


ACCOUNT = {200: (models.Account, "The account (ETag header: its version).")}
WRITTEN = {200: (models.Account, "The account." + PENDING)}
A = "/v1/accounts/{account_id}"

OPERATIONS = [
    Operation(
        "POST",
        "/v1/accounts",
        "createAccount",
        "Create a billing account",
        create_account,
        P.OPERATOR_WRITE,
        None,
        {201: (models.Account, "Created." + PENDING)},
        models.NewAccount,
    ),
    Operation(
        "GET",
        "/v1/accounts",
        "listAccounts",
        "List billing accounts, by id",
        list_accounts,
        P.OPERATOR_READ,
        None,
        {200: (models.AccountPage, "One page.")},
        errors=(400,),
        parameters=(
            _q(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
                "Accounts per page.",
            ),
            _q(
                "cursor",
                {"type": "string", "pattern": "^acct_[0-9A-Za-z]{1,64}$"},
                "next_cursor of the page before.",
            ),
            _q(
                "name",
                {"type": "string", "minLength": 1, "maxLength": models.MAX_NAME_CHARS},
                "Part of the name, any case.",
            ),
            _q("status", {"enum": list(models.ACCOUNT_STATUSES)}, "Only accounts in this status."),
        ),
    ),
    Operation(
        "GET",
        A,
        "getAccount",
        "Read an account",
        get_account,
        P.READ,
        "account_id",
        ACCOUNT,
        etag=True,
    ),
    Operation(
        "PATCH",
        A,
        "renameAccount",
        "Rename an account",
        rename,
        P.ACCOUNT_WRITE,
        "account_id",
        WRITTEN,
        models.AccountChanges,
        errors=(409,),
        etag=True,
    ),
    Operation(
        "PUT",
        A + "/limits",
        "setLimits",
        "Set the overage line, daily hard limit and thresholds",
        put_limits,
        P.LIMITS_WRITE,
        "account_id",
        WRITTEN,
        models.Limits,
        errors=(409,),
        etag=True,
        description="Only an operator may change the overage line (the provider's credit).",
    ),
    Operation(
        "POST",
        A + "/suspend",
        "suspendAccount",
        "Suspend: the gateway answers 403 for the account's keys",
        suspend,
        P.OPERATOR_WRITE,
        "account_id",
        WRITTEN,
        errors=(409,),
    ),
    Operation(
        "POST",
        A + "/resume",
        "resumeAccount",
        "Resume a suspended account",
        resume,
        P.OPERATOR_WRITE,
        "account_id",
        WRITTEN,
        errors=(409,),
    ),
    Operation(
        "POST",
        A + "/deletion-request",
        "requestDeletion",
        "Ask for the account's deletion (pending_deletion)",
        request_deletion,
        P.ACCOUNT_DELETE,
        "account_id",
        WRITTEN,
        errors=(409,),
    ),
    Operation(
        "POST",
        A + "/deletion-request/cancel",
        "cancelDeletion",
        "Withdraw a deletion request",
        cancel_deletion,
        P.ACCOUNT_DELETE,
        "account_id",
        WRITTEN,
        errors=(409,),
    ),
    Operation(
        "POST",
        A + "/close",
        "closeAccount",
        "Close: keys refused at once; the ledger keeps everything",
        close,
        P.OPERATOR_WRITE,
        "account_id",
        WRITTEN,
    ),
    Operation(
        "GET",
        A + "/balance",
        "getBalance",
        "The live balance and what is available to spend now",
        get_balance,
        P.READ,
        "account_id",
        {200: (models.Balance, "Live values from Redis.")},
        errors=(503,),
    ),
]
