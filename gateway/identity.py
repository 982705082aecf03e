"""Who is calling: the API key a request presents, resolved to its billing account.

Key -> account never changes, so it is cached in process (bounded LRU of
SHA-256 digest -> ``KeyRecord``) and never invalidated: revocation and
suspension are decided inside the admission script, from the account's hash,
so they take effect at once on every replica whatever this cache holds.

Unknown keys are remembered for ``negative_ttl`` seconds (a bounded map too),
so a stream of calls with a deleted key costs one Redis lookup per TTL. A
mistyped key fails its checksum and is refused before any lookup. Concurrent
misses for one key share a single lookup.

On a single Redis there is no separate lookup: the proxy hands the admission
script the digest of a key it has not cached (``unresolved``), the script reads
the key's hash and admits in the same step, and its answer fills the cache
(``learn``). A miss then costs no extra round trip.

The cache is consulted by digest before the checksum is verified: only a
well-formed key is ever put in it, so a hit proves the shape, and the checksum
(6 us in pure Python, measured) is paid on misses only; the digest costs 1 us.

The cache holds each record as a plain tuple, and hands out ``KeyRecord`` s
(0.1 us a hit): Python's collector untracks a tuple of strings and ints, never
a named tuple or any other object. With a million keys cached as named tuples,
every one of them was scanned by each full collection (0.7 s pauses, measured
at c64) and the churn of a full cache kept triggering them; plain tuples cost
the collector nothing once it has seen them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from gateway import errors
from gateway.metrics import GatewayMetrics
from meter import apikeys, live_state
from meter.live_state import KeyRecord
from meter.live_state import StateUnavailable as StateUnavailableError

# What a request with two Authorization (or two X-API-Key) headers presents: never a
# well-formed key, told apart by identity where a key is vetted (400 repeated-api-key).
REPEATED_KEY = "\x00repeated"


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key from ``Authorization: Bearer <key>``, else from ``X-API-Key``;
    ``REPEATED_KEY`` when either header comes twice."""
    auth: bytes | None = None
    api_key: bytes | None = None
    repeated = False
    for name, value in headers:
        size = len(name)
        if size == 13 and name.lower() == b"authorization":
            repeated = repeated or auth is not None
            auth = value
        elif size == 9 and name.lower() == b"x-api-key":
            repeated = repeated or api_key is not None
            api_key = value
    return REPEATED_KEY if repeated else key_from(auth, api_key)


def key_from(authorization: bytes | None, api_key: bytes | None) -> str | None:
    """``presented_key`` for a server layer that noted the two headers while parsing."""
    if authorization:
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer":
            return token.strip().decode("latin-1")
    return api_key.strip().decode("latin-1") if api_key is not None else None


_record = tuple.__new__  # KeyRecord from the cached plain tuple, without re-checking it


class KeyCache:
    """Bounded LRU of digest -> KeyRecord, and a bounded, expiring set of unknown digests."""

    def __init__(
        self,
        size: int,
        negative_ttl: float,
        *,
        negative_size: int | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.negative_ttl = negative_ttl
        self.negative_size = negative_size if negative_size is not None else size
        self.now = now
        self._known: OrderedDict[str, tuple[str, str, str, int]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()  # digest -> expiry

    def __len__(self) -> int:
        return len(self._known)

    def get(self, digest: str) -> KeyRecord | None:
        fields = self._known.get(digest)
        if fields is None:
            return None
        self._known.move_to_end(digest)
        return _record(KeyRecord, fields)

    def put(self, digest: str, record: KeyRecord) -> None:
        # A plain tuple, not the named one: see the module's docstring.
        self._known[digest] = (record.key_id, record.project_id, record.account_id, record.shard)
        self._known.move_to_end(digest)
        self._unknown.pop(digest, None)
        if len(self._known) > self.size:
            self._known.popitem(last=False)

    def known_unknown(self, digest: str) -> bool:
        expiry = self._unknown.get(digest)
        if expiry is None:
            return False
        if expiry > self.now():
            return True
        del self._unknown[digest]
        return False

    def put_unknown(self, digest: str) -> None:
        if self.negative_ttl <= 0:
            return
        self._unknown[digest] = self.now() + self.negative_ttl
        self._unknown.move_to_end(digest)
        if len(self._unknown) > self.negative_size:
            self._unknown.popitem(last=False)


class KeyLookup(Protocol):
    def get_api_key(self, key_hash_hex: str) -> Awaitable[KeyRecord | None]: ...


class Identifier:
    def __init__(self, lookup: KeyLookup, cache: KeyCache, metrics: GatewayMetrics) -> None:
        self.lookup = lookup
        self.cache = cache
        self.metrics = metrics
        self._pending: dict[str, list[asyncio.Future[KeyRecord | None]]] = {}

    def cached(self, key: str | None) -> KeyRecord | None:
        """The record of a key the cache holds (a hit), without awaiting anything."""
        if not key:
            return None
        record = self.cache.get(apikeys.digest(key))
        if record is not None:
            self.metrics.key_hit.inc()
        return record

    async def identify(self, key: str | None) -> KeyRecord:
        """The record of the presented key (``presented_key``), or the 401/503 refusal."""
        if not key:
            raise errors.MissingKey()
        digest = apikeys.digest(key)
        record = self.cache.get(digest)
        if record is not None:
            self.metrics.key_hit.inc()
            return record
        self._vet(key, digest)
        record = await self._resolve(digest)
        if record is None:
            raise errors.UnknownKey()
        return record

    def unresolved(self, key: str | None) -> str:
        """The digest of a key ``cached`` does not hold, for the admission script to resolve
        (then ``learn``); the 401 refusal when it is missing, malformed or known unknown."""
        if not key:
            raise errors.MissingKey()
        digest = apikeys.digest(key)
        self._vet(key, digest)
        return digest

    def learn(self, digest: str, record: KeyRecord | None) -> None:
        """What the admission script found for a key (None: no such key)."""
        if record is None:
            self.cache.put_unknown(digest)
        else:
            self.cache.put(digest, record)

    def _vet(self, key: str, digest: str) -> None:
        if not apikeys.well_formed(key):
            raise errors.RepeatedKey() if key is REPEATED_KEY else errors.MalformedKey()
        if self.cache.known_unknown(digest):
            self.metrics.key_negative_hit.inc()
            raise errors.UnknownKey()
        self.metrics.key_miss.inc()

    async def _resolve(self, digest: str) -> KeyRecord | None:
        # One lookup per digest however many calls wait on it. Each caller waits on
        # its own future, so one that goes away (cancelled) cancels only its wait. No
        # task per miss: the lookup's own future calls back (a task costs ~5 us).
        waiting: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        waiters = self._pending.get(digest)
        if waiters is not None:
            waiters.append(waiting)
        else:
            started = time.perf_counter()
            try:
                lookup = asyncio.ensure_future(self.lookup.get_api_key(digest))
            except StateUnavailableError as exc:
                raise errors.StateUnavailable(str(exc)) from exc
            self._pending[digest] = [waiting]
            lookup.add_done_callback(functools.partial(self._looked_up, digest, started))
        return await waiting

    def _looked_up(
        self, digest: str, started: float, lookup: asyncio.Future[KeyRecord | None]
    ) -> None:
        self.metrics.redis_key.observe(time.perf_counter() - started)
        waiters = self._pending.pop(digest, ())
        error: BaseException | None
        if lookup.cancelled():
            error = StateUnavailableError("key lookup cancelled")
        else:
            error = lookup.exception()
        if error is None:
            record = lookup.result()
            self.learn(digest, record)
            for waiting in waiters:
                if not waiting.done():
                    waiting.set_result(record)
            return
        for waiting in waiters:
            if not waiting.done():
                # A fresh exception each: a shared one would collect every waiter's traceback.
                waiting.set_exception(
                    errors.StateUnavailable(str(error))
                    if isinstance(error, live_state.StateUnavailable)
                    else error
                )
