"""Load tests: the side-by-side throughput benchmark (`make bench`) and a locust file.

`python -m loadtests.bench` measures the echo upstream alone, nginx, a plain
aiohttp reverse proxy and the metering gateway on this machine with wrk, and
writes the results to `loadtests/results/`. See `loadtests/README.md`.
"""
