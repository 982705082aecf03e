-- Who may do what, the billing profile, the audit log and the portal's sign-in.
-- Secrets (tokens, one-time links, session cookies) are stored as SHA-256 hex only.

-- An account is closed by an operator (final; the gateway refuses its keys) and may
-- carry an owner's deletion request; row_version is the ETag of the account's writes.
alter table accounts drop constraint accounts_status_check;
alter table accounts add constraint accounts_status_check
    check (status in ('active', 'suspended', 'closed'));
alter table accounts
    add column deletion_requested_at timestamptz,
    add column closed_at             timestamptz,
    add column row_version           bigint not null default 1;
create index accounts_name on accounts (lower(name), id);

-- A person may belong to several billing accounts, with one role on each.
create table people (
    id         text primary key,
    email      text not null,
    name       text not null check (length(name) between 1 and 200),
    created_at timestamptz not null default now()
);
create unique index people_email on people (lower(email));

create table members (
    id         text primary key,
    account_id text not null references accounts (id),
    person_id  text not null references people (id),
    role       text not null check (role in ('owner', 'admin', 'billing', 'viewer')),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (account_id, person_id)
);
create index members_person on members (person_id);

-- Bearer tokens of the admin API: an operator's (account_id null) or an account's own.
create table api_tokens (
    id         text primary key,
    account_id text references accounts (id),
    name       text not null check (length(name) between 1 and 200),
    role       text not null check (role in
                   ('operator', 'operator-readonly', 'owner', 'admin', 'billing', 'viewer')),
    token_hash text not null unique,
    prefix     text not null,
    created_by text not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    check ((account_id is null) = (role in ('operator', 'operator-readonly')))
);
create index api_tokens_account on api_tokens (account_id, created_at);

create table billing_profiles (
    account_id    text primary key references accounts (id),
    legal_name    text,
    address_line1 text,
    address_line2 text,
    city          text,
    postal_code   text,
    state         text,
    country       text check (country ~ '^[A-Z]{2}$'),
    po_number     text,
    version       bigint not null default 1,
    updated_at    timestamptz not null default now()
);

create table tax_ids (
    id          text primary key,
    account_id  text not null references accounts (id),
    type        text not null,
    country     text not null check (country ~ '^[A-Z]{2}$'),
    value       text not null,
    description text,
    status      text not null default 'unverified' check (status in ('unverified', 'verified')),
    created_at  timestamptz not null default now(),
    verified_at timestamptz,
    deleted_at  timestamptz
);
create unique index tax_ids_live on tax_ids (account_id, type, value) where deleted_at is null;
create index tax_ids_account on tax_ids (account_id, created_at);

-- One-time sign-in links of the portal and the sessions they start.
create table portal_links (
    token_hash  text primary key,
    account_id  text not null references accounts (id),
    member_id   text not null references members (id),
    return_url  text not null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null,
    redeemed_at timestamptz
);

create table portal_sessions (
    id           text primary key,
    token_hash   text not null unique,
    person_id    text not null references people (id),
    account_id   text not null references accounts (id),  -- the account being viewed
    return_url   text not null,
    created_at   timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    expires_at   timestamptz not null,                     -- the absolute limit
    ended_at     timestamptz
);
create index portal_sessions_person on portal_sessions (person_id) where ended_at is null;

-- Every change: who, what, on which object, before and after, from where. Written in the
-- transaction of the change itself.
create table audit_log (
    id          bigint generated always as identity primary key,
    account_id  text references accounts (id),
    actor_type  text not null check (actor_type in
                    ('operator', 'operator_token', 'account_token', 'member', 'system')),
    actor_id    text not null,
    action      text not null,
    object_type text not null,
    object_id   text not null,
    before      jsonb,
    after       jsonb,
    request_id  text,
    client_addr text,
    created_at  timestamptz not null default now()
);
create index audit_log_account on audit_log (account_id, id desc);
