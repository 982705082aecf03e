"""The gateway's HTTP/1.1 server: an ``asyncio.Protocol`` per connection, httptools parsing.

Why by hand: aiohttp's server layer costs more per call than everything the
gateway does (measured in ``loadtests/README.md``). This is what uvicorn does:
an ``asyncio.Protocol`` per connection and httptools (llhttp) for parsing,
driving the ``Proxy`` through the ``Exchange`` seam.

How this works
--------------
* ``RawConnection`` (``raw_connection.py``) feeds every read to
  ``httptools.HttpRequestParser``. When a request head is complete it becomes a
  ``RawRequest`` (``raw_request.py``: the ``Exchange``) and is queued; requests
  are answered one at a time, in order (pipelining), by one task per
  connection, which waits on a future while the queue is empty: a keep-alive
  call wakes it instead of creating a task.
* The first request in line starts its admission as its head is parsed
  (``Proxy.begin``: a cached key, a priced route), so the admissions whose
  heads arrive in one loop pass go to Redis in that pass. A request queued behind
  another (pipelined) is admitted when its turn comes: the connection may close
  before it is answered, and it must not have been debited then.
* The lane: a request whose admission started with its head is answered by
  callbacks, not by the task. When the admission's reply is in (in the Redis
  pipe's read), ``Proxy.forward_now`` sends the admitted call upstream on an
  idle connection, head and body in one write; when the upstream's answer is in
  (in that connection's read), ``Proxy.relay_now`` writes it to the client. Any
  other case (a refusal, a body still coming, a new upstream connection to open, a 5xx, a
  variable-cost route, a streamed answer) is handed to the task, whose
  ``Proxy.handle`` goes on from where the lane stopped. The plain call then
  costs no task wake-up and no coroutine: 3-15 % less gateway CPU at 64
  connections in interleaved A/Bs (``loadtests/README.md``).
* Bodies: ``on_body`` chunks queue on their request; the proxy reads them
  through ``RawRequest.__anext__``. More than ``HIGH_WATER`` bytes waiting, or
  more than ``_MAX_PIPELINE`` requests queued, pause reading from the client.
  ``Expect: 100-continue`` is answered on the first body read: after the size,
  key and admission checks passed; a refusal is the final answer at once.
* Responses: one ``transport.write`` for a whole small response (head from
  pre-encoded parts, ``Date`` rebuilt once a second); streamed bodies use
  Content-Length when the upstream declared one, chunked otherwise (close-
  delimited for HTTP/1.0), and wait while the client's socket buffer is full.
* A connection is kept alive when both sides want it and the request body was
  read to its end before the response went out; otherwise the response says
  ``Connection: close`` and the connection closes after it (we never guess
  where an unread body ends), lingering as nginx does when the client may still
  be sending, so a reset cannot destroy the answer (``RawConnection.close``).
* Limits: target longer than ``max_url_bytes`` -> 414; more than
  ``max_headers`` fields or ``max_header_bytes`` -> 431 (also for one endless
  header line, counted as it arrives); a transfer coding other than chunked ->
  501; anything llhttp refuses (both Content-Length and Transfer-Encoding,
  bad chunk sizes, bare LF, obs-fold...) -> 400. Each of these answers after
  the requests before it, then closes the connection.
* Connections: at most ``max_client_connections`` clients at once (by default what
  the open-files limit leaves once the upstream pool and Redis have theirs,
  ``connection_cap``); one more is closed as it comes, before it can take a
  descriptor the upstream pool needs (nginx's ``worker_connections``).
* Timeouts are deadlines swept by one timer per server (no timer and no clock
  read per call): a request head must arrive within ``client_timeout`` (408, close); each wait
  for request body bytes and each stalled response write get ``client_timeout``
  (the body counts as incomplete: 400 and refunded; a stuck client is cut); an
  idle keep-alive connection is closed after ``keepalive_timeout``.
* A client that goes away does not cancel its call: the proxy finishes it
  (settling as its rules say: a call that reached the upstream is charged),
  writes go nowhere, and the upstream connection is dropped if its response
  was not read to the end.
* ``shutdown``: stop accepting, close idle connections, let in-flight calls
  finish (their responses say ``Connection: close``) for up to the grace
  period, then cut what is left.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, cast

from gateway import http11
from gateway.proxy import Proxy
from gateway.raw_connection import RawConnection
from gateway.runtime import Runtime
from meter import open_files

log = logging.getLogger("gateway.server")

# Descriptors kept for everything but clients and upstream connections: the listening
# socket, Redis connections, log files, the metrics port, a reconnect in progress.
FD_RESERVE = 64


def connection_cap(configured: int, descriptors: int, upstream_pool: int) -> int:
    """How many client connections the raw server keeps open at once: ``configured``,
    or (0) what the open-files limit ``descriptors`` leaves once the upstream pool and
    ``FD_RESERVE`` have theirs (at least 1)."""
    if configured > 0:
        return configured
    return max(descriptors - upstream_pool - FD_RESERVE, 1)


class RawServer:
    """Serves the runtime's proxy (and ``/_meter/*``) on asyncio protocols."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.loop: asyncio.AbstractEventLoop = cast(Any, None)
        self.proxy: Proxy = cast(Any, None)
        self.max_url = settings.max_url_bytes
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.max_head = settings.max_url_bytes + settings.max_header_bytes + 1024
        self.max_body = settings.max_body_bytes
        # Body bytes on the wire (chunk framing, trailers) before the body is too large anyway.
        self.max_wire = 2 * settings.max_body_bytes + settings.max_header_bytes + (1 << 16)
        self.client_timeout = settings.client_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.max_connections = connection_cap(
            settings.max_client_connections, open_files.soft_limit(), settings.upstream_pool_size
        )
        self.connections: set[RawConnection] = set()
        self.date = http11.DateLine()
        self.draining = False
        self.all_closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._date_timer: asyncio.TimerHandle | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._tick = min(max(min(self.client_timeout, self.keepalive_timeout) / 10, 0.01), 0.5)
        # The loop's clock as of the last sweep: deadlines are set from it (no clock read
        # per call) and so fire up to one tick early, a tick being a tenth of a timeout.
        self.now = 0.0

    async def start(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> int:
        """Listen (on ``host:port`` or ``sock``); returns the port."""
        assert self.runtime.proxy is not None, "open_runtime() first"
        self.proxy = self.runtime.proxy
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()
        if sock is not None:
            self._server = await self.loop.create_server(
                lambda: RawConnection(self), sock=sock, backlog=backlog
            )
        else:
            self._server = await self.loop.create_server(
                lambda: RawConnection(self),
                host,
                port,
                reuse_port=reuse_port or None,
                backlog=backlog,
            )
        self._refresh_date()
        self._sweep_timer = self.loop.call_later(self._tick, self._sweep)
        return int(self._server.sockets[0].getsockname()[1])

    def _refresh_date(self) -> None:
        now = time.time()
        self.date.refresh(now)
        delay = 1.0 - (now % 1.0) + 0.0005  # just after the next second begins
        self._date_timer = self.loop.call_later(delay, self._refresh_date)

    def _sweep(self) -> None:
        now = self.now = self.loop.time()
        for conn in [c for c in self.connections]:
            if conn.head_deadline <= now or conn.io_deadline <= now or conn.idle_deadline <= now:
                conn.sweep(now)
        self._sweep_timer = self.loop.call_later(self._tick, self._sweep)

    def stop_accepting(self) -> None:
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, finish in-flight calls for up to ``grace`` seconds, cut the rest."""
        self.stop_accepting()
        if self.connections:
            try:
                async with asyncio.timeout(grace):
                    await self.all_closed.wait()
            except TimeoutError:
                log.warning(
                    "shutdown grace over; cutting connections",
                    extra={"connections": len(self.connections)},
                )
        for conn in list(self.connections):
            conn.abort()
        for timer in (self._date_timer, self._sweep_timer):
            if timer is not None:
                timer.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # connection_lost callbacks
