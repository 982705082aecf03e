"""The admin API: provisioning of billing accounts, projects, API keys, limits and credits.

Postgres is the book of record; every write lands there first (one
transaction), then in Redis through the idempotent scripts of
``meter.live_state``, then is marked as applied. ``admin.sync`` re-applies
whatever a crash or a Redis outage left unapplied.
"""
