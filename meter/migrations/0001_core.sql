-- Billing accounts, projects, API keys (hash only) and the ledger: the book of record.
-- Money is bigint micros. Writes land here first, then in Redis; the *_version /
-- redis_* columns say what Redis has seen, so a crash between the two is repaired
-- by re-applying (every Redis write is idempotent).

create table accounts (
    id                     text primary key,
    name                   text not null check (length(name) between 1 and 200),
    billing_email          text,
    shard                  integer not null check (shard >= 0),
    status                 text not null default 'active' check (status in ('active', 'suspended')),
    overage_line           bigint not null default 0 check (overage_line >= 0),
    daily_hard_limit       bigint check (daily_hard_limit >= 0),
    daily_notify_threshold bigint check (daily_notify_threshold >= 0),
    low_balance_threshold  bigint check (low_balance_threshold >= 0),
    -- Balance projection of the ledger entries below (credits at once; usage as the
    -- ledger worker applies it).
    balance                bigint not null default 0,
    config_version         bigint not null default 1,
    redis_version          bigint not null default 0,
    created_at             timestamptz not null default now(),
    updated_at             timestamptz not null default now()
);
create index accounts_unsynced on accounts (id) where redis_version < config_version;

create table projects (
    id         text primary key,
    account_id text not null references accounts (id),
    name       text not null check (length(name) between 1 and 200),
    created_at timestamptz not null default now()
);
create index projects_account on projects (account_id);

create table api_keys (
    id           text primary key,
    project_id   text not null references projects (id),
    account_id   text not null references accounts (id),
    key_hash     text not null unique,          -- SHA-256 hex of the key; the key itself is never stored
    prefix       text not null,                 -- the first characters, to recognise it in a list
    created_at   timestamptz not null default now(),
    revoked_at   timestamptz,
    redis_synced boolean not null default false -- Redis has the key record and its revocation
);
create index api_keys_project on api_keys (project_id);
create index api_keys_unsynced on api_keys (id) where not redis_synced;

create table ledger_entries (
    id              bigint generated always as identity primary key,
    account_id      text not null references accounts (id),
    amount          bigint not null,   -- signed micros: credits positive, debits negative
    balance_after   bigint not null,
    kind            text not null check (kind in ('credit', 'grant', 'recharge', 'usage', 'refund', 'adjustment')),
    description     text not null,
    idempotency_key text,
    created_at      timestamptz not null default now(),
    redis_applied   boolean not null default false,
    unique (account_id, idempotency_key)
);
create index ledger_entries_account on ledger_entries (account_id, id desc);
create index ledger_entries_unapplied on ledger_entries (id) where not redis_applied;
