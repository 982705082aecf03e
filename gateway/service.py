"""Run the gateway: ``main(settings)`` blocks until SIGTERM or SIGINT.

One worker (the default) serves in this process. With
``METER_GATEWAY_WORKERS=N`` the process forks N workers that each bind the
same port with SO_REUSEPORT (the kernel spreads connections across them) and
supervises them: a worker that dies is restarted, and SIGTERM/SIGINT is passed
on to every worker.

Shutdown of a worker: stop accepting, report not ready, let in-flight calls
finish for up to ``METER_SHUTDOWN_GRACE`` seconds, then close the upstream
pool and Redis. Logs are JSON lines on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

import uvloop
from aiohttp import web

from gateway.app import RUNTIME, create_app
from gateway.pricing import load_prices
from meter.logs import setup_logging
from meter.settings import ConfigError, Settings

log = logging.getLogger("gateway")
RESTART_BACKOFF = 1.0


def main(settings: Settings) -> None:
    setup_logging(settings.log_level)
    if settings.gateway_workers > 1 and settings.gateway_port == 0:
        raise ConfigError("METER_GATEWAY_PORT=0: several workers need a fixed port")
    load_prices(settings.prices_path)  # fail before forking
    if settings.gateway_workers == 1:
        _run_worker(settings, 0, reuse_port=False)
    else:
        _supervise(settings)


def _run_worker(settings: Settings, index: int, *, reuse_port: bool) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, index=index, reuse_port=reuse_port))


async def serve(settings: Settings, *, index: int = 0, reuse_port: bool = False) -> None:
    app = create_app(settings)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_grace
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(
            runner,
            settings.gateway_host,
            settings.gateway_port,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else settings.gateway_port
        log.info(
            "gateway listening",
            extra={
                "host": settings.gateway_host,
                "port": port,
                "worker": index,
                "pid": os.getpid(),
            },
        )
        await stop.wait()
        app[RUNTIME].draining = True
        for listening in list(runner.sites):
            await listening.stop()
        log.info("gateway draining", extra={"worker": index, "pid": os.getpid()})
    finally:
        await runner.cleanup()  # stop accepting, drain up to the grace, close pools
        log.info("gateway stopped", extra={"worker": index, "pid": os.getpid()})


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
        log.error("gateway worker exited; restarting", extra={"worker": index, "code": code})
        time.sleep(RESTART_BACKOFF)
        if not stopping:
            spawn(index)
    log.info("gateway supervisor stopped")
    if failed:
        sys.exit(1)
