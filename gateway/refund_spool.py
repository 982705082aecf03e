"""Refunds and voids waiting for Redis, kept on disk (``METER_REFUND_SPOOL_DIR``):
a worker killed outright, or stopped while Redis is still away, leaves them to
the next worker that starts on the same folder instead of losing them.

How it works: each worker appends to a file of its own, ``<pid>-<random>.spool``,
and holds an exclusive ``flock`` on it for its whole life. The kernel drops the
lock when the process ends, however it ends, so a spool whose lock can be taken
belongs to a worker that is gone. A starting worker claims every such file
(``RefundSpool.claim``): it copies what is still waiting into its own spool,
then deletes the old file, and tries that work as its own. A file is
created under a name claims do not look at and renamed once locked, so a claim
never takes the file of a worker that is starting.

Claiming twice is harmless (a worker killed between copying and deleting leaves
both files): settle.lua gives back at most once per call, and void.lua answers
the same every time it is asked about a batch.

The file is JSON lines, each written by one ``write`` on an ``O_APPEND``
descriptor and never fsynced: it outlives the process, not the machine.

    {"n":1,"at":1765000000.5,"day":20428,"reason":"upstream_5xx","event":"1765-0",
     "micros":1200,"call":[3,"acct_1","proj_1","key_1","default",1200]}
    {"n":2,"at":1765000000.7,"day":20428,"batch":"{meter:3}:batch:...",
     "calls":[[3,"acct_1","proj_1","key_1","default",1200],["<sha256>","chat",100000]]}
    {"done":[1,2]}

``at`` is the wall-clock time of the work's first failed try: the retry period
(``METER_REFUND_RETRY_SECONDS``) counts from it in whichever worker ends up
trying, so a refund is never tried after settle.lua's marker could have expired.

The folder gives money back, so it must be the gateway's own: it is created
0700, and refused at start-up when another user owns it or others may write
to it (``check_folder``). A file with a line that cannot be read is renamed
``*.unreadable`` for an operator to look at; its readable lines are claimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.metrics import GatewayMetrics
from meter.live_state import Call, KeyCall
from meter.settings import ConfigError

log = logging.getLogger("gateway.refunds")

SUFFIX = ".spool"


@dataclass(slots=True)
class PendingRefund:
    call: Call
    event_id: str  # the admission's usage event, which the refund names
    amount: int
    day: int
    reason: str
    since: float  # when the first try failed (the retrier's monotonic clock)
    at: float  # the same moment on the wall clock (survives the process)
    n: int = 0  # its line in this worker's spool (0: not spooled)


@dataclass(slots=True)
class PendingVoid:
    batch_key: str  # keys.admit_batch: the batch's record
    calls: list[Call | KeyCall]
    day: int
    since: float
    at: float
    n: int = 0


Pending = PendingRefund | PendingVoid


def check_folder(folder: str, *, uid: int | None = None) -> Path:
    """Create ``folder`` (0700) if needed; refuse one that is not safely ours (``uid``:
    this process's effective user)."""
    path = Path(folder)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"METER_REFUND_SPOOL_DIR={folder}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"METER_REFUND_SPOOL_DIR={folder}: not a folder")
    if info.st_uid != (os.geteuid() if uid is None else uid):
        raise ConfigError(
            f"METER_REFUND_SPOOL_DIR={folder}: owned by uid {info.st_uid}, not by this"
            " user: what it holds gives money back"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"METER_REFUND_SPOOL_DIR={folder}: others may write to it"
            f" (mode {stat.S_IMODE(info.st_mode):o}): what it holds gives money back"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"METER_REFUND_SPOOL_DIR={folder}: not writable")
    return path


# -- lines ------------------------------------------------------------------------------------


def encode(work: Pending) -> dict[str, Any]:
    if isinstance(work, PendingVoid):
        return {
            "n": work.n,
            "at": work.at,
            "day": work.day,
            "batch": work.batch_key,
            "calls": [_call_fields(call) for call in work.calls],
        }
    return {
        "n": work.n,
        "at": work.at,
        "day": work.day,
        "reason": work.reason,
        "event": work.event_id,
        "micros": work.amount,
        "call": _call_fields(work.call),
    }


def decode(line: dict[str, Any]) -> Pending:
    """A spooled line back as work, not numbered, its ``since`` left for the claiming
    worker to set from ``at``. ValueError (or KeyError, TypeError) for a line that is
    not one we wrote."""
    at, day = _number(line["at"]), _int(line["day"])
    if "batch" in line:
        calls: list[Call | KeyCall] = [_call(fields) for fields in _list(line["calls"])]
        return PendingVoid(_str(line["batch"]), calls, day, 0.0, at)
    call = _call(line["call"])
    if not isinstance(call, Call):
        raise ValueError("a refund names a resolved call")
    return PendingRefund(
        call,
        _str(line["event"]),
        _int(line["micros"]),
        day,
        _str(line["reason"]),
        0.0,
        at,
    )


def _call_fields(call: Call | KeyCall) -> list[Any]:
    if isinstance(call, KeyCall):
        return [call.digest, call.route, call.price]
    return list(call)


def _call(fields: Any) -> Call | KeyCall:
    items = _list(fields)
    if len(items) == 3:
        return KeyCall(_str(items[0]), _str(items[1]), _int(items[2]))
    if len(items) != 6:
        raise ValueError("a call has 3 or 6 fields")
    shard, account, project, key, route, price = items
    return Call(_int(shard), _str(account), _str(project), _str(key), _str(route), _int(price))


def _int(value: Any) -> int:
    if type(value) is not int:
        raise ValueError(f"not an integer: {value!r}")
    return value


def _number(value: Any) -> float:
    if type(value) not in (int, float):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not a string: {value!r}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"not a list: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Claimed:
    """A stopped worker's spool: the work still waiting in it, and how many lines
    could not be read (the file is then kept as ``*.unreadable``)."""

    path: Path
    waiting: list[Pending]
    unreadable: int


def waiting(text: bytes) -> tuple[list[Pending], int]:
    """The work in a spool not marked done, and the number of lines not readable."""
    added: dict[int, Pending] = {}
    done: set[int] = set()
    unreadable = 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
            if not isinstance(line, dict):
                raise ValueError("not an object")
            if "done" in line:
                done.update(_int(n) for n in _list(line["done"]))
            else:
                added[_int(line["n"])] = decode(line)
        except (ValueError, KeyError, TypeError):
            unreadable += 1
    return [work for n, work in added.items() if n not in done], unreadable


# -- the files --------------------------------------------------------------------------------


class RefundSpool:
    """This worker's spool file, and the claiming of stopped workers' files."""

    def __init__(self, folder: Path, metrics: GatewayMetrics) -> None:
        self.folder = folder
        self.metrics = metrics
        self.path: Path | None = None
        self._fd = -1
        self._next = 1

    def open(self) -> None:
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        starting = self.folder / f".{name}.new"  # not a name claims look at
        fd = os.open(
            starting, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        self.path = self.folder / f"{name}{SUFFIX}"
        os.rename(starting, self.path)
        self._fd = fd

    def claim(self) -> list[Claimed]:
        """Every spool whose worker is gone: what waits in it, copied into this worker's
        spool (numbered), then the file deleted (renamed ``*.unreadable`` when a line could
        not be read; left in place when the copy could not be written, for a later claim).
        Files of live workers are left alone."""
        found = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            if path == self.path:
                continue
            claimed = self._claim(path)
            if claimed is not None:
                found.append(claimed)
        return found

    def _claim(self, path: Path) -> Claimed | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # claimed by another worker meanwhile
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its worker is alive (or another is claiming it)
                return None
            try:  # claimed and deleted by another worker between our open and lock?
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    return None
            except FileNotFoundError:
                return None
            with os.fdopen(os.dup(fd), "rb") as file:
                works, unreadable = waiting(file.read())
            if not self.add(works):
                return Claimed(path, works, unreadable)  # kept where it is, and tried here
            if unreadable:
                self.metrics.spool_unreadable.inc(unreadable)
                os.rename(path, path.with_name(path.name + ".unreadable"))
            else:
                path.unlink()
            return Claimed(path, works, unreadable)
        finally:
            os.close(fd)  # drops the lock

    def add(self, works: list[Pending]) -> bool:
        """Number ``works`` and write them down, in one write; False if that failed."""
        if self._fd < 0 or not works:
            return self._fd >= 0
        out = []
        for work in works:
            work.n = self._next
            self._next += 1
            out.append(orjson.dumps(encode(work)))
        return self._write(b"\n".join(out) + b"\n")

    def done(self, works: list[Pending]) -> None:
        numbers = [work.n for work in works if work.n]
        if self._fd >= 0 and numbers:
            self._write(orjson.dumps({"done": numbers}) + b"\n")

    def clear(self) -> None:
        """Nothing waits any more: the file starts again empty."""
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, 0)
            except OSError as exc:
                log.error("refund spool could not be emptied", extra={"error": str(exc)})
                self.metrics.spool_write_errors.inc()

    def close(self, *, keep: bool) -> None:
        """Close this worker's file; delete it unless ``keep`` (work left waiting)."""
        if self._fd < 0:
            return
        if not keep and self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = -1

    def _write(self, data: bytes) -> bool:
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write: {written} of {len(data)} bytes")
        except OSError as exc:  # the work still waits in memory
            log.error(
                "refund spool write failed: a worker killed now would lose what waits",
                extra={"error": str(exc), "path": str(self.path)},
            )
            self.metrics.spool_write_errors.inc()
            return False
        return True
