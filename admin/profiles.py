"""The billing profile (invoice address, invoice email) and tax registrations.

The profile is one row per account, created empty on first write; its
``version`` is the ETag a write's ``If-Match`` is checked against under the
row lock. The invoice email is the account's ``billing_email``. Countries and
tax ids are checked by ``admin.tax_registrations`` (pycountry, python-stdnum).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from admin import audit, ids, models
from admin import repository as repo
from admin.audit import Actor
from admin.errors import Conflict, InvalidInput, NotFound
from admin.provisioning import check_etag
from admin.records import CLOSED, BillingProfile, TaxRegistration
from admin.tax_registrations import check_all

PROFILE_FIELDS = (
    "legal_name",
    "address_line1",
    "address_line2",
    "city",
    "postal_code",
    "state",
    "country",
    "po_number",
)
_PROFILE = (
    "select a.id as account_id, p.legal_name, p.address_line1, p.address_line2, p.city,"
    " p.postal_code, p.state, p.country, p.po_number, a.billing_email as invoice_email,"
    " coalesce(p.version, 0) as version, p.updated_at"
    " from accounts a left join billing_profiles p on p.account_id = a.id where a.id = $1"
)
_TAX = "id, account_id, type, country, value, description, status, created_at, verified_at"


class Profiles:
    def __init__(
        self, pool: asyncpg.Pool, on_change: Callable[[str], Awaitable[None]] | None = None
    ) -> None:
        self.pool = pool
        # Told the account after a committed change (payments passes it to Stripe).
        self.on_change = on_change

    async def _changed(self, account_id: str) -> None:
        if self.on_change is not None:
            await self.on_change(account_id)

    async def profile(self, account_id: str) -> BillingProfile:
        return await _profile(self.pool, account_id)

    async def put_profile(
        self,
        actor: Actor,
        account_id: str,
        new: models.BillingProfileIn,
        *,
        if_match: str | None,
    ) -> BillingProfile:
        async with self.pool.acquire() as conn, conn.transaction():
            account = await repo.get_account(conn, account_id, for_update=True)
            if account is None:
                raise NotFound(f"no account {account_id!r}")
            if account.status == CLOSED:
                raise Conflict(f"account {account_id} is closed")
            before = await _profile(conn, account_id)
            check_etag(before.etag, if_match)
            values = [getattr(new, f) for f in PROFILE_FIELDS]
            await conn.execute(
                f"insert into billing_profiles (account_id, {', '.join(PROFILE_FIELDS)})"
                " values ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                " on conflict (account_id) do update set "
                + ", ".join(f"{f} = excluded.{f}" for f in PROFILE_FIELDS)
                + ", version = billing_profiles.version + 1, updated_at = now()",
                account_id,
                *values,
            )
            if new.invoice_email != account.billing_email:
                await repo.update_account(
                    conn, account_id, "billing_email = $2", new.invoice_email, config=False
                )
            after = await _profile(conn, account_id)
            await audit.record(
                conn,
                actor,
                "billing_profile.update",
                "billing_profile",
                account_id,
                account_id=account_id,
                before=before,
                after=after,
            )
        await self._changed(account_id)
        return after

    # -- tax registrations ---------------------------------------------------------------

    async def tax_ids(self, account_id: str) -> list[TaxRegistration]:
        await _profile(self.pool, account_id)  # 404 for an unknown account
        rows = await self.pool.fetch(
            f"select {_TAX} from tax_ids where account_id = $1 and deleted_at is null"
            " order by created_at, id",
            account_id,
        )
        return [TaxRegistration.from_row(r) for r in rows]

    async def add_tax_id(
        self, actor: Actor, account_id: str, new: models.NewTaxId
    ) -> TaxRegistration:
        checked, errors = check_all(new.type, new.country, new.value)
        if errors or checked is None:
            raise InvalidInput(errors)
        async with self.pool.acquire() as conn, conn.transaction():
            account = await repo.get_account(conn, account_id, for_update=True)
            if account is None:
                raise NotFound(f"no account {account_id!r}")
            if account.status == CLOSED:
                raise Conflict(f"account {account_id} is closed")
            row = await conn.fetchrow(
                "insert into tax_ids (id, account_id, type, country, value, description)"
                " values ($1, $2, $3, $4, $5, $6) on conflict do nothing"
                f" returning {_TAX}",
                ids.new_id(ids.TAX_ID),
                account_id,
                checked.type,
                checked.country,
                checked.value,
                new.description,
            )
            if row is None:
                raise Conflict(f"{checked.type} {checked.value} is already registered")
            tax_id = TaxRegistration.from_row(row)
            await audit.record(
                conn,
                actor,
                "tax_id.add",
                "tax_id",
                tax_id.id,
                account_id=account_id,
                after=tax_id,
            )
        return tax_id

    async def delete_tax_id(self, actor: Actor, account_id: str, tax_id: str) -> TaxRegistration:
        return await self._change_tax_id(
            actor, account_id, tax_id, "tax_id.delete", "deleted_at = now()"
        )

    async def verify_tax_id(self, actor: Actor, account_id: str, tax_id: str) -> TaxRegistration:
        return await self._change_tax_id(
            actor,
            account_id,
            tax_id,
            "tax_id.verify",
            "status = 'verified', verified_at = coalesce(verified_at, now())",
        )

    async def _change_tax_id(
        self, actor: Actor, account_id: str, tax_id: str, action: str, assignments: str
    ) -> TaxRegistration:
        async with self.pool.acquire() as conn, conn.transaction():
            before = await _tax_id(conn, account_id, tax_id)
            row = await conn.fetchrow(
                f"update tax_ids set {assignments} where id = $1 returning {_TAX}", tax_id
            )
            after = TaxRegistration.from_row(row)
            await audit.record(
                conn,
                actor,
                action,
                "tax_id",
                tax_id,
                account_id=account_id,
                before=before,
                after=after,
            )
        await self._changed(account_id)
        return after


async def _profile(conn: Any, account_id: str) -> BillingProfile:
    row = await conn.fetchrow(_PROFILE, account_id)
    if row is None:
        raise NotFound(f"no account {account_id!r}")
    return BillingProfile.from_row(row)


async def _tax_id(conn: Any, account_id: str, tax_id: str) -> TaxRegistration:
    row = await conn.fetchrow(
        f"select {_TAX} from tax_ids where id = $1 and account_id = $2 and deleted_at is null"
        " for update",
        tax_id,
        account_id,
    )
    if row is None:
        raise NotFound(f"no tax id {tax_id!r}")
    return TaxRegistration.from_row(row)
