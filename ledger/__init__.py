"""The ledger: Postgres is the book of record.

``worker`` moves the usage events from the shard streams into Postgres in
batches, exactly once (read its "how this works"); ``service`` runs it with its
HTTP server (``app``: /metrics, /healthz, /readyz); ``reconcile`` proves Redis
agrees with the book and repairs Redis from it; ``history`` answers the balance
history and usage queries of the admin API.

Pure decisions: ``events`` (parsing), ``batching`` (what a batch writes),
``ownership`` (which shards to take), ``drift`` (does Redis agree),
``history_query`` (parameters, cursors). Adapters: ``store`` (the worker's
Postgres), ``book`` (reconcile's Postgres), ``streams`` (Redis). Also:
``metrics``, ``errors``, ``crash`` (fault injection for the tests).
"""
