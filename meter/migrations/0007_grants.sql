-- Credit grants: each positive credit is a grant (included, promotional, purchased) with
-- an optional expiry and what remains of it. Usage draws on the live grant that expires
-- first, per ledger batch (grants/spending.py decides, grants/store.py writes); at
-- expiry a grant_expiry entry removes exactly what is left. The invariant the tests
-- hold: per account, sum(remaining of live grants) = max(0, accounts.balance).

alter table ledger_entries drop constraint ledger_entries_kind_check;
alter table ledger_entries add constraint ledger_entries_kind_check
    check (kind in ('credit', 'grant', 'recharge', 'usage', 'refund', 'adjustment',
                    'purchase', 'payment_refund', 'invoice_payment', 'credits_applied',
                    'grant_expiry'));

create table credit_grants (
    id              bigint generated always as identity primary key,
    account_id      text not null references accounts (id),
    -- The credit that made it; null only for the balance carried over by this migration.
    ledger_entry_id bigint unique references ledger_entries (id),
    -- refund: a usage refund with no drawn grant left to return to (grants/spending.py).
    kind            text not null check (kind in ('included', 'promotional', 'purchased', 'refund')),
    amount          bigint not null check (amount > 0),
    remaining       bigint not null check (remaining >= 0 and remaining <= amount),
    expires_at      timestamptz,
    -- The account's number of the last draw on it (0: never drawn) and what that draw
    -- took (less what came back since): a refund undoes the newest draws first.
    drawn           bigint not null default 0,
    taken           bigint not null default 0 check (taken >= 0),
    created_at      timestamptz not null default now(),
    -- Set once, by the expiry sweep, in the transaction of its grant_expiry entry.
    ended_at        timestamptz,
    expired_amount  bigint check (expired_amount >= 0),
    expiry_entry_id bigint unique references ledger_entries (id),
    check ((ended_at is null) = (expired_amount is null))
);
-- The live grants of an account (every writer holds the account's row lock first).
create index credit_grants_live on credit_grants (account_id) where ended_at is null;
create index credit_grants_account on credit_grants (account_id, id desc);
-- What the sweep looks for: live grants by expiry.
create index credit_grants_due on credit_grants (expires_at)
    where ended_at is null and expires_at is not null;

-- What the accounts hold today becomes one grant each that never expires, so that the
-- invariant holds from the start.
insert into credit_grants (account_id, kind, amount, remaining)
select id, 'purchased', balance, balance from accounts where balance > 0;
