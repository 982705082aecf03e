"""The metering gateway: the hot path of every customer call.

A call is identified (API key -> billing account, cached in process), priced
(route table), admitted in one atomic Redis script call (check + debit + usage
event), streamed to the upstream and back, and settled (variable cost,
refunds) with at most one more script call. Never touches Postgres.

    app.py         create_app(settings): the one wiring point (aiohttp server mode)
    service.py     main(settings): uvloop, JSON logs, SO_REUSEPORT workers, graceful shutdown
    proxy.py       the handler: identify -> price -> admit -> forward -> settle -> record
    identity.py    API key from the request, key -> account cache
    pricing.py     the price table (pure)
    admission.py   the seam to Redis (admit, settle)
    upstream.py    the seam to the upstream service
    headers.py     which headers cross, which are added (pure; the header names live here)
    errors.py      every refusal, with its status and problem type
    metrics.py     every Prometheus metric
    testing.py     an echo upstream and account provisioning for tests and benchmarks
"""
