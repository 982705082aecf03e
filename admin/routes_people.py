"""Members of an account, account tokens and operator tokens."""

from __future__ import annotations

from typing import Any

from admin import ids, models
from admin.access import Permission as P
from admin.declared import NO_STORE, Call, Operation, Reply
from admin.records import Token


async def list_members(call: Call[Any]) -> Reply:
    found = await call.services.people.members(call.account)
    return Reply(models.MemberList(data=[models.Member.model_validate(m) for m in found]))


async def add_member(call: Call[models.NewMember]) -> Reply:
    member = await call.services.people.add_member(call.actor, call.account, call.body)
    return Reply(models.Member.model_validate(member), 201)


def _member_id(call: Call[Any]) -> str:
    return call.path("member_id", ids.MEMBER, "member")


async def change_member(call: Call[models.MemberChanges]) -> Reply:
    member = await call.services.people.change_role(
        call.actor, call.account, _member_id(call), call.body.role
    )
    return Reply(models.Member.model_validate(member))


async def remove_member(call: Call[Any]) -> Reply:
    member = await call.services.people.remove_member(call.actor, call.account, _member_id(call))
    return Reply(models.Member.model_validate(member))


def _new_token(token: Token, secret: str) -> Reply:
    body = models.NewToken(**models.Token.model_validate(token).model_dump(), token=secret)
    return Reply(body, 201, dict(NO_STORE))


def _tokens(found: list[Token]) -> Reply:
    return Reply(models.TokenList(data=[models.Token.model_validate(t) for t in found]))


async def list_account_tokens(call: Call[Any]) -> Reply:
    return _tokens(await call.services.people.tokens(call.account))


async def create_account_token(call: Call[models.NewAccountToken]) -> Reply:
    token, secret = await call.services.people.create_token(
        call.actor, call.account, call.body.name, call.body.role
    )
    return _new_token(token, secret)


async def revoke_account_token(call: Call[Any]) -> Reply:
    token_id = call.request.match_info["token_id"]
    return Reply(
        models.Token.model_validate(
            await call.services.people.revoke_token(call.actor, token_id, operator=False)
        )
    )


async def list_operator_tokens(call: Call[Any]) -> Reply:
    return _tokens(await call.services.people.tokens(None))


async def create_operator_token(call: Call[models.NewOperatorToken]) -> Reply:
    token, secret = await call.services.people.create_token(
        call.actor, None, call.body.name, call.body.role
    )
    return _new_token(token, secret)


async def revoke_operator_token(call: Call[Any]) -> Reply:
    token_id = call.path("token_id", ids.TOKEN, "token")
    return Reply(
        models.Token.model_validate(
            await call.services.people.revoke_token(call.actor, token_id, operator=True)
        )
    )


A = "/v1/accounts/{account_id}"
M = A + "/members/{member_id}"
CREATED_TOKEN = {201: (models.NewToken, "Created: the token is shown only here.")}
OPERATIONS = [
    Operation(
        "GET",
        A + "/members",
        "listMembers",
        "The account's members and their roles",
        list_members,
        P.READ,
        "account_id",
        {200: (models.MemberList, "The members.")},
    ),
    Operation(
        "POST",
        A + "/members",
        "addMember",
        "Add a person (by email) with a role",
        add_member,
        P.MEMBERS_WRITE,
        "account_id",
        {201: (models.Member, "Added.")},
        models.NewMember,
        errors=(409,),
    ),
    Operation(
        "PATCH",
        M,
        "changeMember",
        "Change a member's role (the last owner stays)",
        change_member,
        P.MEMBERS_WRITE,
        "account_id",
        {200: (models.Member, "The member.")},
        models.MemberChanges,
        errors=(409,),
    ),
    Operation(
        "DELETE",
        M,
        "removeMember",
        "Remove a member (not the last owner)",
        remove_member,
        P.MEMBERS_WRITE,
        "account_id",
        {200: (models.Member, "The member removed.")},
        errors=(409,),
    ),
    Operation(
        "GET",
        A + "/tokens",
        "listAccountTokens",
        "The account's API tokens (no secrets)",
        list_account_tokens,
        P.TOKENS_READ,
        "account_id",
        {200: (models.TokenList, "The tokens.")},
    ),
    Operation(
        "POST",
        A + "/tokens",
        "createAccountToken",
        "A token for the account's own automation, with one role",
        create_account_token,
        P.TOKENS_WRITE,
        "account_id",
        CREATED_TOKEN,
        models.NewAccountToken,
        errors=(409,),
    ),
    Operation(
        "DELETE",
        "/v1/tokens/{token_id}",
        "revokeAccountToken",
        "Revoke an account token (idempotent); refused at once",
        revoke_account_token,
        P.TOKENS_WRITE,
        "token_id",
        {200: (models.Token, "The revoked token.")},
    ),
    Operation(
        "GET",
        "/v1/operator-tokens",
        "listOperatorTokens",
        "Operator tokens (no secrets)",
        list_operator_tokens,
        P.OPERATOR_READ,
        None,
        {200: (models.TokenList, "The tokens.")},
    ),
    Operation(
        "POST",
        "/v1/operator-tokens",
        "createOperatorToken",
        "A named operator token",
        create_operator_token,
        P.OPERATOR_WRITE,
        None,
        CREATED_TOKEN,
        models.NewOperatorToken,
    ),
    Operation(
        "DELETE",
        "/v1/operator-tokens/{token_id}",
        "revokeOperatorToken",
        "Revoke an operator token (idempotent)",
        revoke_operator_token,
        P.OPERATOR_WRITE,
        None,
        {200: (models.Token, "The revoked token.")},
        errors=(404,),
    ),
]
