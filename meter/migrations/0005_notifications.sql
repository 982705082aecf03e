-- Telling people: spend management (a daily budget and several thresholds), webhook
-- endpoints, email settings and opt-ins, and the deliveries made from the outbox.

-- Spend management. The effective daily budget is accounts.daily_hard_limit (what the
-- gateway enforces); daily_budget here keeps the amount while it is switched off.
create table spend_settings (
    account_id   text primary key references accounts (id),
    enabled      boolean not null default false,
    daily_budget bigint check (daily_budget > 0),
    row_version  bigint not null default 1,
    updated_at   timestamptz not null default now()
);

-- Each threshold is an absolute amount (micros) or a percentage of the daily budget.
create table spend_thresholds (
    id         text primary key,                  -- thr_...
    account_id text not null references accounts (id),
    kind       text not null check (kind in ('absolute', 'percent')),
    value      bigint not null check (value > 0),
    created_at timestamptz not null default now(),
    check (kind <> 'percent' or value <= 100),
    unique (account_id, kind, value)
);

-- A threshold amount passed on a UTC day: at most one row, one event.
create table spend_thresholds_passed (
    account_id text not null references accounts (id),
    day        integer not null,
    amount     bigint not null,
    spent      bigint not null,
    event_id   text not null,
    passed_at  timestamptz not null default now(),
    primary key (account_id, day, amount)
);

-- Where billing mail goes (seed 001 Invoice Notifications); the account's billing
-- email when unset.
create table notification_settings (
    account_id    text primary key references accounts (id),
    invoice_email text,
    row_version   bigint not null default 1,
    updated_at    timestamptz not null default now()
);

-- A member's opt-in to the email of one event type.
create table notification_subscriptions (
    member_id  text not null references members (id) on delete cascade,
    event_type text not null,
    created_at timestamptz not null default now(),
    primary key (member_id, event_type)
);

-- Webhook endpoints. The signing secret must be known to sign, so it is kept (and
-- shown to the customer once); a rotated one keeps signing until previous_expires_at.
create table webhook_endpoints (
    id                  text primary key,         -- we_...
    account_id          text not null references accounts (id),
    url                 text not null,
    description         text,
    event_types         text[] not null default '{}',   -- empty: every event
    enabled             boolean not null default true,
    disabled_reason     text,
    secret              text not null,
    previous_secret     text,
    previous_expires_at timestamptz,
    failing_since       timestamptz,
    row_version         bigint not null default 1,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    deleted_at          timestamptz
);
create index webhook_endpoints_account on webhook_endpoints (account_id, created_at)
    where deleted_at is null;

-- The outbox is fanned out once into deliveries (dispatched_at), each claimed by one
-- worker at a time through its lease.
alter table outbox_events add column dispatched_at timestamptz;
create index outbox_events_undispatched on outbox_events (occurred_at) where dispatched_at is null;

create table notification_deliveries (
    id              text primary key,             -- dlv_...
    event_id        text not null references outbox_events (id),
    account_id      text references accounts (id),
    channel         text not null check (channel in ('webhook', 'email')),
    endpoint_id     text references webhook_endpoints (id),
    recipient       text,                          -- an email address
    status          text not null default 'pending'
                        check (status in ('pending', 'succeeded', 'failed', 'canceled')),
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz not null default now(),
    finished_at     timestamptz,
    check ((channel = 'webhook') = (endpoint_id is not null)),
    check ((channel = 'email') = (recipient is not null))
);
create unique index notification_deliveries_webhook on notification_deliveries (event_id, endpoint_id)
    where channel = 'webhook';
create unique index notification_deliveries_email on notification_deliveries (event_id, lower(recipient))
    where channel = 'email';
create index notification_deliveries_due on notification_deliveries (next_attempt_at)
    where status = 'pending';
create index notification_deliveries_endpoint on notification_deliveries (endpoint_id, created_at desc);

create table delivery_attempts (
    id          bigint generated always as identity primary key,
    delivery_id text not null references notification_deliveries (id),
    attempt     integer not null,
    started_at  timestamptz not null,
    status_code integer,
    latency_ms  double precision not null,
    ok          boolean not null,
    error       text,
    excerpt     text not null default '',
    unique (delivery_id, attempt)
);

-- Sign-in by email: requests by address (hashed) and client, for the rate limits.
create table email_signin_requests (
    id           bigint generated always as identity primary key,
    address_hash text not null,
    client       text not null,
    requested_at timestamptz not null default now()
);
create index email_signin_requests_address on email_signin_requests (address_hash, requested_at);
create index email_signin_requests_client on email_signin_requests (client, requested_at);
