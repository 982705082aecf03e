"""A pipelined Redis client for the hot path: raw asyncio connections, many commands in flight.

How this works
--------------
redis.asyncio costs ~130 us of CPU per command on this machine (issue 4); the
hot path needs a handful. This client does only what the hot path needs:

* Each connection is an ``asyncio.Protocol``. A command is encoded once (by
  ``hiredis.pack_command``: measured 2x faster than encoding by hand in Python),
  appended to a write buffer, and gets a reply sink (a future, or an object that
  acts on the reply at once: ``ReplySink``) and a deadline in a FIFO. The
  buffer is written with one ``transport.write`` per loop pass (``call_soon``),
  or at once when a caller (the admission batcher) calls ``flush()``.
* Redis answers a connection's commands in order, so ``data_received`` feeds
  ``hiredis.Reader`` and pops one FIFO entry per reply. Error replies come out
  of the reader as ``RedisReplyError`` instances and fail only their command.
* One timer per connection watches the oldest command's deadline. A late reply
  means every reply behind it is late too and the stream can no longer be
  trusted to line up, so a timeout (like a lost connection or a protocol error)
  fails the connection: every command in flight fails with a ``StateUnavailable``
  (the gateway answers 503), never a guessed success, and the next command opens
  a new connection. Connecting is lazy (over TLS for ``rediss://``: see
  ``redis_address.py``); AUTH and SELECT are simply the first commands of a new
  connection's pipeline, and a refusal fails the connection.
* EVALSHA entries remember their script: a ``NOSCRIPT`` reply (Redis restarted
  or flushed its script cache; the script did not run) queues one SCRIPT LOAD
  per script, however many commands were in flight, then the same EVALSHA
  again, once. Replies are ordered, so the retry always runs after the load.

Errors (all are ``meter.live_state.StateUnavailable``, which the gateway maps to 503)::

    StateUnavailable
     └── RedisPipeError
          ├── RedisUnreachable   cannot connect, connection lost or refused, pipe closed
          │    └── RedisNotSent  ... and the command had not been written: it did not run
          ├── RedisTimeout       no reply within the timeout
          └── RedisReplyError    Redis answered with an error reply
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any, Protocol, cast

import hiredis

from meter.live_state import StateUnavailable
from meter.redis_address import Arg, RedisAddress, pack_command
from meter.scripts import LuaScript

# A decoded reply: bytes, int, None, or a list of replies (an error inside an
# array stays a RedisReplyError value).
Reply = Any


class ReplySink(Protocol):
    """Where a command's reply goes: an ``asyncio.Future``, or an object that acts on the
    reply at once, inside ``data_received`` (the admission batcher's batches: a future's
    done callback would cost one more event-loop pass before the callers wake)."""

    def done(self) -> bool: ...

    def set_result(self, result: Reply, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class RedisPipeError(StateUnavailable):
    """A command through the pipe did not get a usable reply."""


class RedisUnreachable(RedisPipeError):
    pass


class RedisNotSent(RedisUnreachable):
    """The connection failed before the command was written to it: it did not run."""


class RedisTimeout(RedisPipeError):
    pass


class RedisReplyError(RedisPipeError):
    """Redis answered with an error reply; the message is Redis's own."""


# FIFO entry kinds: what to do with the reply.
_PLAIN = 0  # resolve the future
_EVALSHA = 1  # resolve the future; on NOSCRIPT load the script and send again
_LOAD = 2  # internal SCRIPT LOAD; reply dropped
_HANDSHAKE = 3  # internal AUTH/SELECT; an error fails the connection

_NOT_ENOUGH_DATA = object()
# A deadline this close counts as passed (event loop timers may fire a little early).
_TIMER_SLACK = 0.001

_Entry = tuple[ReplySink | None, float, int, Any]


class _Connection(asyncio.Protocol):
    """One Redis connection; many commands in flight, answered in order."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: RedisAddress,
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = loop
        self.address = address
        self.tls = tls
        self.timeout = timeout
        self.closed = False  # no new commands; the pipe opens another connection
        self.gone: asyncio.Future[None] = loop.create_future()  # transport released
        self._reader = hiredis.Reader(replyError=RedisReplyError, notEnoughData=_NOT_ENOUGH_DATA)
        self._pending: collections.deque[_Entry] = collections.deque()
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loading: set[str] = set()  # scripts with a SCRIPT LOAD in flight
        self._connecting: asyncio.Task[Any] | None = None
        for payload, what in address.handshake():
            self._push(None, payload, _HANDSHAKE, what)

    def open(self) -> None:
        if self.address.path:
            connect = self.loop.create_unix_connection(lambda: self, self.address.path)
        else:
            connect = self.loop.create_connection(
                lambda: self,
                self.address.host,
                self.address.port,
                ssl=self.tls,
                server_hostname=self.address.host if self.tls is not None else None,
                ssl_handshake_timeout=self.timeout if self.tls is not None else None,
            )
        self._connecting = self.loop.create_task(connect)
        self._connecting.add_done_callback(self._connect_done)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- sending ----------------------------------------------------------------------

    def send(self, payload: bytes, sink: ReplySink, script: LuaScript | None = None) -> None:
        if script is None:
            self._push(sink, payload, _PLAIN, None)
        else:
            self._push(sink, payload, _EVALSHA, (script, payload))

    def _push(self, sink: ReplySink | None, payload: bytes, kind: int, extra: Any) -> None:
        self._pending.append((sink, self.loop.time() + self.timeout, kind, extra))
        self._wbuf.append(payload)
        if self._timer is None:
            self._timer = self.loop.call_at(self._pending[0][1], self._check_deadline)
        if not self._flush_scheduled and self._transport is not None:
            self._flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        if self._wbuf and self._transport is not None:
            buf, self._wbuf = self._wbuf, []
            self._transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    # -- receiving --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        if self.closed:
            tcp.abort()
            return
        self._transport = tcp
        self.flush()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        pending = self._pending
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisUnreachable, f"redis protocol error: {exc}")
                return
            if reply is _NOT_ENOUGH_DATA:
                return
            if not pending:
                self.fail(RedisUnreachable, "redis sent a reply nobody asked for")
                return
            sink, _, kind, extra = pending.popleft()
            if type(reply) is RedisReplyError:
                self._error_reply(sink, kind, extra, reply)
                if self.closed:
                    return
            elif sink is not None:
                if not sink.done():  # the caller may have given up (cancelled)
                    sink.set_result(reply)
            elif kind == _LOAD:
                self._loading.discard(extra)

    def _error_reply(
        self, sink: ReplySink | None, kind: int, extra: Any, error: RedisReplyError
    ) -> None:
        if kind == _EVALSHA and str(error).startswith("NOSCRIPT"):
            assert sink is not None
            if sink.done():
                return  # the script did not run and nobody waits for it
            script, payload = extra
            if script.sha not in self._loading:
                self._loading.add(script.sha)
                self._push(None, pack_command(("SCRIPT", "LOAD", script.source)), _LOAD, script.sha)
            self._push(sink, payload, _PLAIN, None)  # once: a second NOSCRIPT is an error
        elif kind == _HANDSHAKE:
            self.fail(RedisUnreachable, f"redis refused {extra} for {self.address}: {error}")
        elif kind == _LOAD:
            self._loading.discard(extra)  # the retried EVALSHA reports the problem
        elif sink is not None and not sink.done():
            sink.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.fail(RedisUnreachable, f"redis connection to {self.address} lost: {exc or 'closed'}")
        if not self.gone.done():
            self.gone.set_result(None)

    def _connect_done(self, task: asyncio.Task[Any]) -> None:
        self._connecting = None
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or exc is not None:
            self.fail(
                RedisUnreachable, f"cannot connect to redis at {self.address}: {exc or 'cancelled'}"
            )
            if not self.gone.done():
                self.gone.set_result(None)

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._pending:
            return
        deadline = self._pending[0][1]
        if deadline - self.loop.time() <= _TIMER_SLACK:
            self.fail(
                RedisTimeout, f"redis at {self.address} did not answer within {self.timeout}s"
            )
        else:
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    # -- failing ----------------------------------------------------------------------

    def fail(self, error: type[RedisPipeError], message: str) -> None:
        """Close the connection; every command in flight fails with ``error(message)``."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows, with nothing left to fail
            self._transport = None
        if self._connecting is not None:
            self._connecting.cancel()
        pending, self._pending = self._pending, collections.deque()
        # One payload per entry: the last ones still in the buffer were never written.
        written = len(pending) - len(self._wbuf)
        self._wbuf = []
        for i, (sink, _, _, _) in enumerate(pending):
            if sink is not None and not sink.done():
                sink.set_exception(error(message) if i < written else RedisNotSent(message))


class RedisPipe:
    """Pipelined Redis commands over ``connections`` raw connections (round robin)."""

    def __init__(self, url: str, *, timeout: float = 1.0, connections: int = 1) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.address = RedisAddress.from_url(url)
        # rediss://: one context for every connection (a CA or key file is read once, here).
        self.tls = self.address.tls.context() if self.address.tls is not None else None
        self.timeout = timeout
        self._conns: list[_Connection | None] = [None] * connections
        self._next = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _connection(self) -> _Connection:
        i = self._next
        if len(self._conns) > 1:
            self._next = (i + 1) % len(self._conns)
        conn = self._conns[i]
        if conn is None or conn.closed:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            conn = self._conns[i] = _Connection(self._loop, self.address, self.timeout, self.tls)
            conn.open()
        return conn

    def _send(self, payload: bytes, sink: ReplySink, script: LuaScript | None = None) -> None:
        if self._closed:
            sink.set_exception(RedisNotSent("the redis pipe is closed"))
        else:
            self._connection().send(payload, sink, script)

    def submit(self, *args: Arg) -> asyncio.Future[Reply]:
        """Send one command; the future resolves with its reply (sent within this loop pass)."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._send(pack_command(args), fut)
        return fut

    async def execute(self, *args: Arg) -> Reply:
        return await self.submit(*args)

    def evalsha(
        self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> asyncio.Future[Reply]:
        """Run ``script``; loaded into Redis and sent again if Redis does not have it."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.evalsha_to(fut, script, keys, args)
        return fut

    def evalsha_to(
        self, sink: ReplySink, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> None:
        """``evalsha`` whose reply (or failure) goes straight to ``sink``."""
        self._send(pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)), sink, script)

    def flush(self) -> None:
        """Write the commands sent so far now instead of at the end of this loop pass."""
        for conn in self._conns:
            if conn is not None:
                conn.flush()

    @property
    def in_flight(self) -> int:
        return sum(c.in_flight for c in self._conns if c is not None)

    async def close(self) -> None:
        """Fail what is in flight, close every connection; later commands fail at once."""
        self._closed = True
        conns = [c for c in self._conns if c is not None]
        self._conns = [None] * len(self._conns)
        for conn in conns:
            conn.fail(RedisUnreachable, "the redis pipe is closed")
        for conn in conns:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.gone), 1.0)
