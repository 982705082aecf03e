-- The ledger worker's tables (ledger/): where each shard's usage stream has been applied
-- up to, the raw usage events, the usage rollups and the pending signal work.
-- Everything a batch writes lands in one transaction with its ledger_offsets row, so
-- a crash at any point either applied the whole batch or none of it.

-- The last usage-stream id applied per shard ("ms-seq"; '0-0' = nothing yet).
create table ledger_offsets (
    shard          integer primary key check (shard >= 0),
    last_id        text not null default '0-0',
    events_applied bigint not null default 0,
    updated_at     timestamptz not null default now()
);

-- Raw usage events, one row per stream entry, partitioned by the UTC day of the entry's
-- stream time (`day`); the worker creates day partitions as needed and drops those older
-- than METER_USAGE_RETENTION_DAYS. (shard, stream_ms, stream_seq) is the event's identity;
-- `day` is a function of stream_ms, so the primary key is unique per event across all
-- partitions and a replayed batch fails instead of counting twice.
create table usage_events (
    day         integer not null,            -- stream_ms / 86400000
    shard       integer not null,
    stream_ms   bigint not null,
    stream_seq  bigint not null,
    kind        "char" not null,             -- d debit, r refund, x refused (signal only)
    account_id  text not null,
    project_id  text not null,
    key_id      text not null,
    route       text not null,
    amount      bigint not null,             -- micros, >= 0; a refund gives this back
    call_day    integer not null,            -- UTC day the call was admitted
    signals     smallint not null default 0, -- meter.money.Signal bits
    refund_of   text,                        -- for a refund: the admitted event's stream id
    primary key (day, shard, stream_ms, stream_seq)
) partition by range (day);

-- Usage per account, UTC day (of admission) and route: admitted calls and the net amount
-- charged (debits minus refunds).
create table usage_rollups (
    account_id text not null,
    day        integer not null,
    route      text not null,
    calls      bigint not null default 0,
    amount     bigint not null default 0,
    primary key (account_id, day, route)
);

-- Signals from the admission script, as pending work for the payments and notifications
-- consumers. A consumer claims a row by setting processed_at in its own transaction.
create table account_signals (
    id           bigint generated always as identity primary key,
    account_id   text not null references accounts (id),
    kind         text not null check (kind in
                     ('notify_threshold', 'hard_limit', 'balance_low', 'overage_started')),
    day          integer not null,           -- UTC day of the call that raised it
    shard        integer not null,
    stream_id    text not null,
    created_at   timestamptz not null default now(),
    processed_at timestamptz,
    unique (shard, stream_id, kind)
);
create index account_signals_pending on account_signals (id) where processed_at is null;
create index account_signals_account on account_signals (account_id, day);

-- Credits (every entry that is not the worker's usage) by account and time: what repair
-- re-marks as applied in Redis.
create index ledger_entries_credits on ledger_entries (account_id, created_at) where kind <> 'usage';
