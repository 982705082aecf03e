"""The benchmark's Redis work: provisioning accounts, reading command counts, checking the money.

Accounts are written the way the admin API writes them, without Postgres:
``LiveState.sync_account`` (limits, status), ``LiveState.credit`` (a balance so
large nothing is refused) and ``LiveState.put_api_key``. The first few go
through ``LiveState`` itself; the rest (up to a million) send the very same
commands (EVALSHA of the same scripts, HSET of the same key record) down one
raw pipelined connection, which provisions ~100k accounts a second; a sample
is then read back through ``LiveState`` to prove the two paths agree.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import hiredis

from meter import apikeys, keys
from meter.live_state import AccountConfig, KeyRecord, LiveState
from meter.scripts import CREDIT, SCRIPTS, SYNC_ACCOUNT

from .keyspace import BenchAccount

BALANCE = 10**15  # micros ($1,000,000,000): no benchmark run can spend it
CREDIT_ID = "bench-seed"
CONFIG = AccountConfig(
    version=1,
    overage_line=0,
    daily_hard_limit=None,
    daily_notify_threshold=None,
    low_balance_threshold=None,
    suspended=False,
)
VIA_LIVE_STATE = 8  # accounts provisioned through LiveState itself
CHUNK = 20_000  # commands per pipelined write


def resp(*args: Any) -> bytes:
    """One command in the Redis protocol."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RawPipe:
    """A blocking Redis connection that sends many commands before reading replies."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        db = parts.path.strip("/")
        if db and db != "0":
            self.call("SELECT", db)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, count: int) -> list[Any]:
        replies: list[Any] = []
        while len(replies) < count:
            reply = self.reader.gets()
            if reply is False:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("redis closed the connection")
                self.reader.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"redis: {reply}")
            replies.append(reply)
        return replies

    def execute(self, commands: Iterable[bytes]) -> list[Any]:
        """Send ``commands`` in chunks, reading each chunk's replies after sending the next."""
        replies: list[Any] = []
        pending = 0
        batch: list[bytes] = []
        for cmd in commands:
            batch.append(cmd)
            if len(batch) >= CHUNK:
                self.sock.sendall(b"".join(batch))
                replies += self._read(pending)
                pending, batch = len(batch), []
        if batch:
            self.sock.sendall(b"".join(batch))
        replies += self._read(pending + len(batch))
        return replies

    def call(self, *args: Any) -> Any:
        return self.execute([resp(*args)])[0]


def _opt(value: int | None) -> int:
    return -1 if value is None else value


def _sync_command(a: BenchAccount, config: AccountConfig) -> bytes:
    return resp(
        "EVALSHA", SYNC_ACCOUNT.sha, 1, keys.account(a.shard, a.account_id),
        config.version, config.overage_line, _opt(config.daily_hard_limit),
        _opt(config.daily_notify_threshold), _opt(config.low_balance_threshold),
        config.status,
    )  # fmt: skip


def _credit_command(a: BenchAccount, amount: int, now_ms: int) -> bytes:
    return resp(
        "EVALSHA", CREDIT.sha, 2,
        keys.account(a.shard, a.account_id), keys.credits_applied(a.shard, a.account_id),
        CREDIT_ID, amount, now_ms, keys.CREDIT_MEMORY_MS,
    )  # fmt: skip


def _key_command(a: BenchAccount) -> bytes:
    return resp(
        "HSET", keys.api_key(apikeys.digest(a.key)),
        "id", a.key_id, "project", a.project_id, "account", a.account_id, "shard", a.shard,
    )  # fmt: skip


def _record(a: BenchAccount) -> KeyRecord:
    return KeyRecord(
        key_id=a.key_id, project_id=a.project_id, account_id=a.account_id, shard=a.shard
    )


async def _through_live_state(
    url: str, accounts: Sequence[BenchAccount], balance: int, config: AccountConfig
) -> None:
    state = LiveState.from_url(url)
    try:
        for a in accounts:
            await state.sync_account(a.shard, a.account_id, config)
            await state.credit(a.shard, a.account_id, CREDIT_ID, balance)
            await state.put_api_key(apikeys.digest(a.key), _record(a))
    finally:
        await state.close()


async def _read_back(url: str, accounts: Sequence[BenchAccount], balance: int) -> None:
    state = LiveState.from_url(url)
    try:
        for a in accounts:
            record = await state.get_api_key(apikeys.digest(a.key))
            account = await state.read_account(a.shard, a.account_id)
            if record != _record(a) or account is None or account.balance != balance:
                raise RuntimeError(
                    f"provisioning check failed for {a.account_id}: {record} {account}"
                )
    finally:
        await state.close()


def provision(
    url: str,
    accounts: Sequence[BenchAccount],
    *,
    balance: int = BALANCE,
    config: AccountConfig = CONFIG,
) -> float:
    """Write new ``accounts`` into Redis; returns the seconds it took."""
    started = time.monotonic()
    asyncio.run(_through_live_state(url, accounts[:VIA_LIVE_STATE], balance, config))
    rest = accounts[VIA_LIVE_STATE:]
    if rest:
        now_ms = int(time.time() * 1000)
        with RawPipe(url) as pipe:
            pipe.call("SCRIPT", "LOAD", SYNC_ACCOUNT.source)
            pipe.call("SCRIPT", "LOAD", CREDIT.source)
            pipe.execute(
                cmd
                for a in rest
                for cmd in (
                    _sync_command(a, config),
                    _credit_command(a, balance, now_ms),
                    _key_command(a),
                )
            )
        step = max(1, len(rest) // 8)
        asyncio.run(_read_back(url, [*rest[::step], rest[-1]], balance))
    return time.monotonic() - started


# -- reading the outcome ------------------------------------------------------------


def total_balance(url: str, accounts: Sequence[BenchAccount]) -> int:
    with RawPipe(url) as pipe:
        replies = pipe.execute(
            resp("HGET", keys.account(a.shard, a.account_id), "bal") for a in accounts
        )
    return sum(int(r) for r in replies)


def stream_length(url: str, shards: int) -> int:
    """Usage events in all shards' streams (no ledger runs in the benchmark: none trimmed)."""
    with RawPipe(url) as pipe:
        return sum(pipe.execute(resp("XLEN", keys.usage_stream(s)) for s in range(shards)))


def last_event_price(url: str, shard: int) -> int | None:
    """The amount (``m``) of the newest usage event of ``shard``."""
    with RawPipe(url) as pipe:
        reply = pipe.call("XREVRANGE", keys.usage_stream(shard), "+", "-", "COUNT", 1)
    if not reply:
        return None
    fields = reply[0][1]
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return int(values[b"m"]) if b"m" in values else None


SCRIPT_COMMANDS = frozenset({"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"})


def commands_inside_scripts() -> frozenset[str]:
    """Command names our Lua scripts run (Redis counts those in commandstats too)."""
    found = set()
    for script in SCRIPTS.values():
        found.update(m.lower() for m in re.findall(r"redis\.call\(\s*'(\w+)'", script.source))
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class CommandCounts:
    scripts: int  # EVALSHA / EVAL calls
    external: int  # commands clients sent: scripts + commands no script runs (INFO excluded)
    executed: int  # every command Redis ran, those inside scripts included (INFO excluded)
    reads: int  # read events on client sockets: ~ round trips (one pipelined batch = one read)


def parse_commandstats(info: dict[str, Any], inside: frozenset[str]) -> tuple[int, int, int]:
    """(script calls, external commands, all commands) from a parsed ``INFO commandstats``.

    Commands that a script runs are counted by Redis as well; those named in
    our scripts are taken as run by them (the gateway sends none of them itself).
    """
    scripts = external = executed = 0
    for name, stat in info.items():
        if not name.startswith("cmdstat_"):
            continue
        command, calls = name[len("cmdstat_") :], int(stat["calls"])
        if command == "info":
            continue
        executed += calls
        if command in SCRIPT_COMMANDS:
            scripts += calls
        if command not in inside:
            external += calls
    return scripts, external, executed


def command_counts(client: Any) -> CommandCounts:
    """Counters from a redis-py (sync) client; its two INFO calls are not counted."""
    scripts, external, executed = parse_commandstats(
        client.info("commandstats"), commands_inside_scripts()
    )
    stats = client.info("stats")
    return CommandCounts(scripts, external, executed, int(stats.get("total_reads_processed", 0)))


def cpu_seconds(client: Any) -> float:
    """Redis's user + system CPU so far, from a redis-py (sync) client's INFO."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def counts_delta(before: CommandCounts, after: CommandCounts) -> CommandCounts:
    return CommandCounts(
        after.scripts - before.scripts,
        after.external - before.external,
        after.executed - before.executed,
        # the two INFO calls of the second sample are two reads of the harness's own
        max(0, after.reads - before.reads - 2),
    )
