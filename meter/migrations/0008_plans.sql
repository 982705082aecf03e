-- Plans and subscriptions: a monthly fee billed in advance on the period's invoice, and
-- included credits granted at the start of each period (expiring at its end).

create table plans (
    id               text primary key,                      -- plan_...
    name             text not null unique check (length(name) between 1 and 100),
    description      text not null default '' check (length(description) <= 500),
    monthly_fee      bigint not null check (monthly_fee >= 0 and monthly_fee % 10000 = 0),
    included_credits bigint not null default 0 check (included_credits >= 0),
    -- Applied to the account when the plan starts; null: left as it is.
    daily_budget     bigint check (daily_budget > 0),
    overage_line     bigint check (overage_line >= 0),
    active           boolean not null default true,         -- offered to new subscribers
    created_at       timestamptz not null default now(),
    row_version      bigint not null default 1
);

create table subscriptions (
    account_id           text primary key references accounts (id),
    plan_id              text not null references plans (id),
    status               text not null check (status in ('active', 'canceled')),
    started_at           timestamptz not null,
    -- The period the subscription last renewed into: its fee recorded, its credits given.
    period_start         date not null,
    -- A change that takes effect when the next period starts.
    next_plan_id         text references plans (id),
    cancel_at_period_end boolean not null default false,
    canceled_at          timestamptz,
    row_version          bigint not null default 1,
    updated_at           timestamptz not null default now()
);

-- What a subscription costs, per period, before an invoice bills it: the fee of a
-- period (on the invoice of the period before: in advance), a prorated start or change
-- (on the invoice of the period it happens in). Unique per key: recorded once.
create table subscription_charges (
    id             bigint generated always as identity primary key,
    account_id     text not null references accounts (id),
    idempotency_key text not null,
    plan_id        text not null references plans (id),
    kind           text not null check (kind in ('fee', 'proration')),
    description    text not null,
    amount         bigint not null check (amount >= 0 and amount % 10000 = 0),
    -- The period whose invoice bills it.
    billed_period  date not null,
    invoice_id     text references invoices (id),
    created_at     timestamptz not null default now(),
    unique (account_id, idempotency_key)
);
create index subscription_charges_unbilled on subscription_charges (account_id, billed_period)
    where invoice_id is null;

-- The invoice line of a fee names its charge.
alter table invoice_lines add column charge_id bigint references subscription_charges (id);
