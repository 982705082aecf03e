"""The metering gateway: the hot path of every customer call.

A call is identified (API key -> billing account, cached in process), priced
(route table), admitted in one atomic Redis script call (check + debit + usage
event), streamed to the upstream and back, and settled (variable cost,
refunds) with at most one more script call. Never touches Postgres.

    service.py     main(settings): uvloop, JSON logs, SO_REUSEPORT workers, graceful shutdown
    runtime.py     open_runtime(): the hot path's wiring (Redis state, upstream pool, proxy)
    raw_server.py  the HTTP/1.1 server on asyncio protocols + httptools:
                   listening, deadlines, shutdown
    raw_connection.py  one client connection: parse, limits, queue, answer in order
    raw_request.py     one request as the proxy sees it (the Exchange), its body and response
    http11.py      response heads for the raw server (pure, pre-encoded)
    ops.py         /_meter/healthz, /readyz, /metrics
    proxy.py       the handler: identify -> price -> admit -> forward -> settle -> relay,
                   on plain values (the Exchange seam the server implements)
    identity.py    API key from the request, key -> account cache
    pricing.py     the price table (pure), and its per-path memo
    usage_meter.py the units a response reports (headers, trailers, JSON, SSE), read
                   as the body passes (pure, bounded)
    admission.py   the seam to Redis (admit, settle)
    upstream.py    the seam to the upstream service
    upstream_pool.py  the upstream client: keep-alive pool on httptools
    upstream_connection.py  one pooled upstream connection and the response it reads
    headers.py     which headers cross, which are added (pure; the header names live here)
    errors.py      every refusal, with its status and problem type
    metrics.py     every metric (cheap in-process counters, exported at scrape time)
    testing.py     an echo upstream and account provisioning for tests and benchmarks
"""
