"""The metering gateway: the hot path of every customer call.

A call is identified (API key -> billing account, cached in process), priced
(route table), admitted in one atomic Redis script call (check + debit + usage
event), streamed to the upstream and back, and settled (variable cost,
refunds) with at most one more script call. Never touches Postgres.

    service.py     main(settings): uvloop, JSON logs, SO_REUSEPORT workers, graceful shutdown
    runtime.py     open_runtime(): the hot path's wiring (Redis state, upstream client, proxy),
                   shared by both server layers
    raw_server.py  the HTTP/1.1 server layer on asyncio protocols + httptools (default):
                   listening, deadlines, shutdown
    raw_connection.py  one client connection: parse, limits, queue, answer in order
    raw_request.py     one request as the proxy sees it (the Exchange), its body and response
    http11.py      response heads for the raw server (pure, pre-encoded)
    app.py         create_app(settings): the aiohttp server layer (METER_GATEWAY_SERVER=aiohttp)
    ops.py         /_meter/healthz, /readyz, /metrics for both server layers
    proxy.py       the handler: identify -> price -> admit -> forward -> settle -> relay,
                   on plain values (the Exchange seam both server layers implement)
    identity.py    API key from the request, key -> account cache
    pricing.py     the price table (pure), and its per-path memo
    admission.py   the seam to Redis (admit, settle)
    upstream.py    the seam to the upstream service, and its aiohttp implementation
    upstream_pool.py  the default upstream client: keep-alive pool on httptools
    upstream_connection.py  one pooled upstream connection and the response it reads
    headers.py     which headers cross, which are added (pure; the header names live here)
    errors.py      every refusal, with its status and problem type
    metrics.py     every metric (cheap in-process counters, exported at scrape time)
    testing.py     an echo upstream and account provisioning for tests and benchmarks
"""
