-- Invoices: one per account and billing period, closed once; lines from the usage
-- rollups; numbers sequential per deployment without gaps.

alter table ledger_entries drop constraint ledger_entries_kind_check;
alter table ledger_entries add constraint ledger_entries_kind_check
    check (kind in ('credit', 'grant', 'recharge', 'usage', 'refund', 'adjustment',
                    'purchase', 'payment_refund', 'invoice_payment', 'credits_applied'));

-- The next invoice number; its row lock, taken in the finalizing transaction, makes
-- numbers gapless (a rolled-back finalization gives its number back).
create table invoice_counter (
    id   integer primary key default 1 check (id = 1),
    next bigint not null default 1
);
insert into invoice_counter (id, next) values (1, 1);

create table invoices (
    id              text primary key,                     -- inv_...
    account_id      text not null references accounts (id),
    period_start    date not null,                         -- first day, inclusive (UTC)
    period_end      date not null,                         -- first day after, exclusive
    status          text not null check (status in
                        ('draft', 'open', 'paid', 'void', 'uncollectible')),
    number          text unique,                           -- set at finalization
    currency        text not null default 'usd',
    usage_amount    bigint not null,                       -- micros, the usage lines
    fee_amount      bigint not null default 0,             -- micros, the plan's fee
    credits_applied bigint not null,                       -- what prepaid credits covered
    amount_due      bigint not null check (amount_due >= 0),
    amount_paid     bigint not null default 0,
    balance_at_end  bigint not null,                       -- the book balance at period end
    seller          jsonb,                                 -- frozen at finalization
    buyer           jsonb,
    created_at      timestamptz not null default now(),
    finalize_after  timestamptz not null,                  -- the end of the draft's grace
    finalized_at    timestamptz,
    due_at          timestamptz,
    paid_at         timestamptz,
    voided_at       timestamptz,
    -- Charging it: attempts so far, the next one's time, and the policy once given up.
    payment_attempts integer not null default 0,
    next_charge_at  timestamptz,
    overdue_at      timestamptz,
    held_overage_line bigint,                              -- the line before the policy
    row_version     bigint not null default 1,
    check (usage_amount + fee_amount = credits_applied + amount_due),
    check (credits_applied >= 0),
    unique (account_id, period_start)
);
create index invoices_account on invoices (account_id, period_start desc);
create index invoices_drafts on invoices (finalize_after) where status = 'draft';
create index invoices_to_charge on invoices (next_charge_at) where status = 'open';

-- An invoice is paid like a purchase: a payments row (purpose 'invoice'), settled once.
alter table payments drop constraint payments_purpose_check;
alter table payments add constraint payments_purpose_check
    check (purpose in ('purchase', 'recharge', 'invoice'));
alter table payments add column invoice_id text references invoices (id);
create unique index payments_one_invoice_charge_in_flight on payments (invoice_id)
    where purpose = 'invoice' and status in ('pending', 'requires_action');

create table invoice_lines (
    invoice_id  text not null references invoices (id),
    position    integer not null,
    kind        text not null check (kind in ('usage', 'fee', 'credits_applied')),
    description text not null,
    route       text,
    calls       bigint,
    amount      bigint not null,                           -- micros; credits_applied negative
    primary key (invoice_id, position)
);

-- Periods closed for every account: the worker's marker, so a closed period is not
-- walked again.
create table billing_periods (
    period_start date primary key,
    period_end   date not null,
    closed_at    timestamptz not null default now(),
    invoices     integer not null
);
