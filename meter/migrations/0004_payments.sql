-- Paying: one Stripe customer per billing account, the cards it holds, every charge
-- (purchases and auto-recharges) written before Stripe is called, Stripe's webhook
-- events applied once, refunds, and the outbox of events the notifications read.

alter table ledger_entries drop constraint ledger_entries_kind_check;
alter table ledger_entries add constraint ledger_entries_kind_check
    check (kind in ('credit', 'grant', 'recharge', 'usage', 'refund', 'adjustment',
                    'purchase', 'payment_refund'));

-- require_payment_method: the gateway refuses the account's calls (402) until a card
-- is on file; has_payment_method is kept by the payments service from the cards below.
alter table accounts
    add column require_payment_method boolean not null default false,
    add column has_payment_method     boolean not null default false;

-- One Stripe customer per account. The row is written (customer id null) before Stripe
-- is asked, so a crash between Stripe's answer and our commit is found again by the
-- account id in the customer's metadata instead of creating a second customer.
create table payment_customers (
    account_id         text primary key references accounts (id),
    stripe_customer_id text unique,
    created_at         timestamptz not null default now(),
    profile_synced_at  timestamptz
);

-- The cards of an account as Stripe last told us (Stripe is the source of truth).
create table payment_methods (
    id          text primary key,            -- Stripe's pm_...
    account_id  text not null references accounts (id),
    brand       text not null,
    last4       text not null,
    exp_month   integer not null,
    exp_year    integer not null,
    name        text,
    is_default  boolean not null default false,
    created_at  timestamptz not null default now(),
    detached_at timestamptz
);
create index payment_methods_account on payment_methods (account_id) where detached_at is null;
create unique index payment_methods_one_default on payment_methods (account_id)
    where is_default and detached_at is null;

-- Every charge: written 'pending' before Stripe is called; our id is Stripe's
-- idempotency key and sits in the PaymentIntent's metadata. A succeeded payment has
-- exactly one ledger entry (idempotency_key = the payment id, unique per account).
create table payments (
    id                      text primary key,             -- pay_...
    account_id              text not null references accounts (id),
    purpose                 text not null check (purpose in ('purchase', 'recharge')),
    method                  text not null check (method in ('card', 'crypto')),
    amount                  bigint not null check (amount > 0 and amount % 10000 = 0),
    currency                text not null default 'usd',
    status                  text not null check (status in
                                ('pending', 'requires_action', 'succeeded', 'failed',
                                 'canceled', 'refused')),
    idempotency_key         text,                          -- the client's (purchases)
    crossing                bigint,                        -- the account's crossing (recharges)
    reason                  text,                          -- why a recharge was made
    crossed_at              timestamptz,                   -- when the balance fell (recharges)
    payment_method_id       text,
    card_brand              text,
    card_last4              text,
    stripe_payment_intent   text unique,
    stripe_checkout_session text unique,
    failure_code            text,
    failure_message         text,
    ledger_entry_id         bigint references ledger_entries (id),
    refunded                bigint not null default 0,
    -- Whoever calls Stripe for this payment holds it until then; the sweep takes
    -- over only after it passed (a crash, a lost answer).
    lease_until             timestamptz not null default now(),
    attempts                integer not null default 0,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    settled_at              timestamptz,
    unique (account_id, idempotency_key),
    unique (account_id, crossing)
);
create index payments_account on payments (account_id, created_at desc, id desc);
create index payments_unsettled on payments (lease_until)
    where status in ('pending', 'requires_action');
-- Never two recharges in flight for one account, however many workers run.
create unique index payments_one_recharge_in_flight on payments (account_id)
    where purpose = 'recharge' and status = 'pending';

-- Auto-recharge settings and state. A crossing is one fall of the balance below the
-- threshold (an account_signals row, or a level check of the sweep); each is
-- numbered, and at most one payment exists per (account, crossing).
create table auto_recharge (
    account_id           text primary key references accounts (id),
    enabled              boolean not null default false,
    threshold            bigint not null check (threshold >= 0),
    amount               bigint check (amount > 0),
    target_balance       bigint check (target_balance > 0),
    max_per_day          integer check (max_per_day > 0),
    max_amount_per_day   bigint check (max_amount_per_day > 0),
    crossings            bigint not null default 0,
    consecutive_failures integer not null default 0,
    retry_at             timestamptz,
    paused_at            timestamptz,
    pause_reason         text,
    row_version          bigint not null default 1,
    updated_at           timestamptz not null default now(),
    check ((amount is null) <> (target_balance is null))
);

-- Stripe events applied, by Stripe's event id, inserted in the transaction of their
-- effect: a redelivered event finds its row and changes nothing.
create table stripe_events (
    id          text primary key,
    type        text not null,
    object_id   text,
    received_at timestamptz not null default now()
);

-- Refunds of succeeded payments, by an operator; written before Stripe is called.
create table payment_refunds (
    id              text primary key,               -- rfd_...
    payment_id      text not null references payments (id),
    account_id      text not null references accounts (id),
    amount          bigint not null check (amount > 0 and amount % 10000 = 0),
    forced          boolean not null default false,
    reason          text,
    idempotency_key text not null,
    status          text not null check (status in ('pending', 'succeeded', 'failed')),
    stripe_refund   text unique,
    failure_message text,
    ledger_entry_id bigint references ledger_entries (id),
    created_at      timestamptz not null default now(),
    settled_at      timestamptz,
    unique (payment_id, idempotency_key)
);

-- Events for people and systems (emails, webhooks), written in the transaction of
-- what caused them; dedupe_key makes each occurrence raised once.
create table outbox_events (
    id          text primary key,                   -- evt_...
    type        text not null,
    account_id  text references accounts (id),
    dedupe_key  text not null unique,
    data        jsonb not null,
    occurred_at timestamptz not null default now()
);
create index outbox_events_account on outbox_events (account_id, occurred_at desc);
