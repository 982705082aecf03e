"""Run the gateway: ``main(settings)`` blocks until SIGTERM or SIGINT.

One worker (the default) serves in this process. With
``METER_GATEWAY_WORKERS=N`` the process forks N workers that each bind the
same port with SO_REUSEPORT (the kernel spreads connections across them) and
supervises them: a worker that dies is restarted, and SIGTERM/SIGINT is passed
on to every worker. A supervisor that dies without passing it on (``kill -9``)
still stops its workers: each is sent SIGTERM by the kernel when its parent dies.

Each worker serves the HTTP/1.1 server of ``raw_server.py``, driving the proxy
wired by ``runtime.open_runtime``.

Shutdown of a worker: stop accepting, report not ready, let in-flight calls
finish for up to ``METER_SHUTDOWN_GRACE`` seconds (idle keep-alive connections
are closed at once), then close the upstream pool and Redis. Logs are JSON
lines on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time

import uvloop

from gateway import ops
from gateway.metrics import GatewayMetrics
from gateway.pricing import load_prices
from gateway.raw_server import RawServer
from gateway.refund_spool import check_folder
from gateway.runtime import Runtime, open_runtime
from meter import open_files, parent_death
from meter.logs import setup_logging
from meter.redis_address import RedisAddress
from meter.settings import ConfigError, Settings

log = logging.getLogger("gateway")
RESTART_BACKOFF = 1.0


def main(settings: Settings) -> None:
    setup_logging(settings.log_level)
    if settings.gateway_workers > 1 and settings.gateway_port == 0:
        raise ConfigError("METER_GATEWAY_PORT=0: several workers need a fixed port")
    load_prices(settings.prices_path)  # fail before forking
    tls = RedisAddress.from_url(settings.redis_url).tls
    if tls is not None:
        try:
            tls.context()  # a CA, certificate or key file it cannot use
        except ValueError as exc:
            raise ConfigError(f"METER_REDIS_URL: TLS: {exc}") from exc
    if settings.refund_spool_dir is not None:
        check_folder(settings.refund_spool_dir)
    if settings.gateway_workers == 1:
        _run_worker(settings, 0, reuse_port=False)
    else:
        _supervise(settings)


def _run_worker(settings: Settings, index: int, *, reuse_port: bool) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, index=index, reuse_port=reuse_port))


async def serve(settings: Settings, *, index: int = 0, reuse_port: bool = False) -> None:
    # A descriptor per client and per upstream connection: a soft limit of 1,024 would
    # fail at about a thousand clients, and the upstream connects with them.
    open_files.raise_limit()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await _serve(settings, stop, index=index, reuse_port=reuse_port)


def _listening(settings: Settings, port: int, index: int, metrics_port: int) -> None:
    # Everything alive now lives as long as the worker: keep it out of the cyclic GC's
    # full collections, which otherwise walk every imported object again and again
    # (measured: ~3.5 us a call on the hot path; ~1 us with the start-up heap frozen).
    # The hot path makes no reference cycles, so the youngest generation may grow to
    # 10,000 objects between collections (default 700): at 1,024 connections in flight
    # that took the Python cost of a call from ~40 to ~34 us in the in-process benchmark.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    log.info(
        "gateway listening",
        extra={
            "host": settings.gateway_host,
            "port": port,
            "metrics_port": metrics_port,
            "worker": index,
        },
    )


async def _serve(settings: Settings, stop: asyncio.Event, *, index: int, reuse_port: bool) -> None:
    runtime = Runtime(settings, GatewayMetrics())
    async with open_runtime(runtime):
        server = RawServer(runtime)
        port = await server.start(
            settings.gateway_host, settings.gateway_port, reuse_port=reuse_port, backlog=1024
        )
        metrics_port = settings.gateway_metrics_port
        operations, metrics_port = await ops.serve_operations(
            runtime, settings.gateway_metrics_host, metrics_port + index if metrics_port else 0
        )
        _listening(settings, port, index, metrics_port)
        try:
            await stop.wait()
            runtime.draining = True
            server.stop_accepting()
            log.info("gateway draining", extra={"worker": index})
        finally:
            await server.shutdown(settings.shutdown_grace)
            await operations.cleanup()
    log.info("gateway stopped", extra={"worker": index})


def _supervise(settings: Settings) -> None:
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # A supervisor killed outright would leave the workers serving on the shared
            # port (a new supervisor would share it with them): they drain and stop.
            if not parent_death.stop_with_parent(supervisor):
                log.warning("workers will outlive a killed supervisor on this platform")
            code = 0
            try:
                _run_worker(settings, index, reuse_port=True)
            except BaseException:
                log.exception("gateway worker failed", extra={"worker": index})
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index

    supervisor = os.getpid()
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(settings.gateway_workers):
        spawn(index)
    log.info("gateway supervisor started", extra={"workers": settings.gateway_workers})
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, -1)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed = failed or code not in (0, -signal.SIGTERM)
            continue
        log.error(
            "gateway worker exited; restarting",
            extra={"worker": index, "worker_pid": pid, "code": code},
        )
        time.sleep(RESTART_BACKOFF)
        if not stopping:
            spawn(index)
    log.info("gateway supervisor stopped")
    if failed:
        sys.exit(1)
