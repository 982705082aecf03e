"""The measuring session behind `make bench`: its servers, its runs, its sweep.

A ``Bench`` owns one Redis (temporary folder), the echo upstream, the API keys
and what has been provisioned. ``main_comparison`` starts every configuration
at once and measures them interleaved, round by round (warm-up, runs at 64
connections and at 1, RSS, exactness for each gateway, which has a Redis
database of its own); ``sweep`` measures, in rounds, throughput and p99 against
concurrency and, for the gateway, against the number of accounts and their key
distribution. A run during which other programs used the CPU is run again
(within a budget), and the machine is given time to go quiet before each round
and sweep point.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from meter import local_servers

from . import keyspace, measure, procstat, redis_side, servers, stats, wrk
from .servers import Server, ServerFailed

SHARDS = 16
MAIN_CONFIGS = ("upstream", "nginx", "nginx-2w", "aiohttp", "gateway", "gateway-2w")
# Gateway variants (1 worker, extra settings) the full plan adds to MAIN_CONFIGS. None
# today: the product has one server, one upstream client and one Redis client; the
# plain aiohttp proxy is the baseline, and an older checkout's modes can still be
# measured as a variant (--variant old-aiohttp:SOURCE=/checkout,METER_GATEWAY_SERVER=aiohttp).
DEFAULT_VARIANTS: dict[str, dict[str, str]] = {}
RERUNS_PER_RUN = 2  # a noisy run is run again at most this often (then kept, marked noisy)


@dataclass(frozen=True, slots=True)
class Plan:
    warmup_s: int
    run_s: int
    runs: int
    c1_run_s: int
    c1_runs: int
    sweep_concurrency: tuple[int, ...]
    sweep_accounts: tuple[int, ...]
    sweep_baselines: tuple[str, ...]
    sweep_warmup_s: int
    sweep_run_s: int
    sweep_runs: int
    reference_pairs: int


FULL = Plan(
    warmup_s=3, run_s=5, runs=7, c1_run_s=3, c1_runs=5,
    sweep_concurrency=(1, 16, 64, 256, 1024), sweep_accounts=(1, 1_000, 1_000_000),
    sweep_baselines=("upstream", "nginx", "aiohttp"),
    sweep_warmup_s=1, sweep_run_s=3, sweep_runs=3, reference_pairs=7,
)  # fmt: skip
QUICK = Plan(
    warmup_s=1, run_s=2, runs=3, c1_run_s=1, c1_runs=3,
    sweep_concurrency=(1, 64, 1024), sweep_accounts=(1, 1_000, 100_000),
    sweep_baselines=("nginx", "aiohttp"),
    sweep_warmup_s=1, sweep_run_s=2, sweep_runs=1, reference_pairs=1,
)  # fmt: skip


# ``--redis-aof``: the persistence the README recommends, without RDB snapshots (a fork
# each) beside it. Without the flag Redis keeps nothing (``local_servers.start_redis``).
REDIS_AOF = "appendonly yes, appendfsync everysec"
REDIS_AOF_ARGS = ("--appendonly", "yes", "--appendfsync", "everysec")

# A variant's setting that is not a METER_* one: the checkout whose gateway it runs.
SOURCE = "SOURCE"

# The side-by-side comparison's phases: connections, and whether wrk and the
# processes under test share one CPU (``measure.pinned``: the latency one hop
# adds, without the VM's cross-core wake-ups).
PHASES = {"c64": (64, False), "c1": (1, False), "c1_one_core": (1, True)}
FILL_PASSES = 3  # at most, to bring every key of a block of many accounts (fill_key_cache)
# The sweep's blocks of many accounts also measure one key at this concurrency,
# interleaved with their own runs (``Bench.sweep_points``).
REFERENCE_CONNECTIONS = 64


def sweep_order(connections: Sequence[int], rounds: int) -> list[int]:
    """The measured runs of a sweep, after a warm-up in the order of ``connections``:
    rounds that turn back and forth (c1024 .. c1, c1 .. c1024, ...), so that a low
    concurrency never runs straight after the highest. Measured with a million keys:
    a c1 run just after c1024 saw p99 11 ms to seconds, the next one 2.7 ms; waiting
    for the machine to go idle (``Bench.settle``) did not help."""
    order: list[int] = []
    for i in range(rounds):
        order += reversed(connections) if i % 2 == 0 else connections
    return order


def pair_order(pairs: int) -> list[bool]:
    """For each pair of ``Bench.reference_pairs``, whether the measured load runs first:
    in turn, so that a run's place in its pair (after a heavier or a lighter one) falls
    on both loads alike."""
    return [i % 2 == 0 for i in range(pairs)]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def gateway_environment(redis_url: str, upstream_url: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env.update(
        {
            "METER_REDIS_URL": redis_url,
            # never used by the gateway: it does not touch Postgres
            "METER_DATABASE_URL": "postgresql://bench@127.0.0.1:1/unused",
            "METER_UPSTREAM_URL": upstream_url,
            "METER_SHARDS": str(SHARDS),
            # like nginx's access_log off: no per-call log lines in the measured path
            "METER_LOG_LEVEL": "warning",
        }
    )
    env.update(extra)
    return env


def key_cache_counts(server: Server) -> dict[str, float]:
    """The gateway's key-cache lookups so far (``meter_gateway_key_cache_total``) by result."""
    with urllib.request.urlopen(server.extra["metrics"], timeout=10) as response:
        return key_cache_results(response.read().decode())


def key_cache_results(exposition: str) -> dict[str, float]:
    """``key_cache_counts`` read from a Prometheus text exposition."""
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "meter_gateway_key_cache"
        for sample in family.samples
        if sample.name == "meter_gateway_key_cache_total"
    }


def describe(profile: dict[str, Any]) -> str:
    """One log line for a configuration's profile."""
    c64, c1, errors = profile["c64"], profile["c1"], profile["errors"]
    us = c64["cpu_us_per_call"].get("proxy")
    text = (
        f"{c64['rps']:,.0f} req/s at c64 (p99 {c64['p99_ms']:.2f} ms), "
        f"p99 {c1['p99_ms']:.3f} ms at c1"
        + (f" ({one['p99_ms']:.3f} on one core)" if (one := profile.get("c1_one_core")) else "")
        + (f", {us:.0f} us/call" if us is not None else "")
    )
    if errors["non_2xx"] or errors["socket"]:
        text += f"; ERRORS: {errors['non_2xx']:,} non-2xx, {errors['socket']:,} socket"
    if "exactness" in profile:
        text += f"; exact: {profile['exactness']['exact']}"
    return text


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan, folder: Path) -> None:
        self.args, self.plan, self.folder = args, plan, folder
        self.path: str = args.path
        self.redis = local_servers.start_redis(
            folder / "redis", extra=REDIS_AOF_ARGS if args.redis_aof else ()
        )
        self.client = redis_sync.Redis.from_url(self.redis.url)
        try:
            self.upstream = servers.start_upstream(folder)
        except BaseException:
            self.redis.stop()
            raise
        needed = max([args.main_accounts, *(plan.sweep_accounts if not args.skip_sweep else ())])
        log(f"making {needed:,} API keys ...")
        self.accounts = list(keyspace.accounts(needed, SHARDS))
        self.keys_file = keyspace.write_keys_file(
            folder / "keys.txt", [a.key for a in self.accounts]
        )
        self.provisioned = 0
        self.provisioning_s: dict[str, float] = {}
        self.retries_left = args.noise_retries
        self.noisy_reruns = 0
        self.quiet_waited_s = 0.0
        # An operator sizes the key cache for the keys in use: here, every key there is.
        cache = {"METER_KEY_CACHE_SIZE": str(needed)}
        self.gateway_env = gateway_environment(
            self.redis.url, self.upstream.url, {**cache, **args.gateway_env}
        )

    def close(self) -> None:
        self.upstream.stop()
        self.client.close()
        self.redis.stop()

    def provision(self, count: int) -> None:
        if count <= self.provisioned:
            return
        log(f"provisioning accounts {self.provisioned:,} .. {count:,} in Redis ...")
        took = redis_side.provision(self.redis.url, self.accounts[self.provisioned : count])
        self.provisioning_s[str(count)] = round(took, 2)
        log(f"  {count - self.provisioned:,} accounts in {took:.1f}s")
        self.provisioned = count

    def load(
        self, accounts: int, distribution: str = "uniform", *, sweep: bool = False
    ) -> wrk.Load:
        """The sweep builds every request in wrk's Lua, one key or a million, so that
        its points differ in the work of the proxy and not in that of wrk."""
        return wrk.Load(self.keys_file, distribution, accounts, self.args.zipf_s, dynamic=sweep)

    # -- servers ----------------------------------------------------------------------

    def start(self, name: str, db: int = 0) -> Server:
        """Start a configuration; a gateway talks to Redis database ``db``."""
        if name == "upstream":
            return self.upstream
        if name in ("nginx", "nginx-2w"):
            return servers.start_nginx(self.folder, self.upstream.url, 1 if name == "nginx" else 2)
        if name == "aiohttp":
            return servers.start_plain_proxy(self.folder, self.upstream.url)
        env = {**self.gateway_env, "METER_REDIS_URL": self.redis_url(db)}
        if name in ("gateway", "gateway-2w"):
            workers = 1 if name == "gateway" else self.args.workers
            return servers.start_gateway(self.folder, env, workers, name)
        if name in self.args.variants:
            settings = dict(self.args.variants[name])
            source = settings.pop(SOURCE, None)
            return servers.start_gateway(
                self.folder, {**env, **settings}, 1, name, Path(source) if source else None
            )
        raise ValueError(name)

    @contextlib.contextmanager
    def running(self, name: str) -> Iterator[Server]:
        server = self.start(name)
        try:
            yield server
        finally:
            if server is not self.upstream:
                server.stop()

    def probe(self, server: Server) -> measure.Probe:
        roles = {"upstream": self.upstream.pid, "redis": self.redis.proc.pid}
        if server is not self.upstream:
            roles = {"proxy": server.pid, **roles}
        return measure.Probe(roles, rss_root=server.pid)

    # -- measuring --------------------------------------------------------------------

    def run(
        self,
        server: Server,
        connections: int,
        seconds: int,
        load: wrk.Load,
        ledger: measure.Ledger | None,
        *,
        warmup: bool = False,
        one_core: bool = False,
    ) -> dict[str, Any]:
        """One wrk run; again (within the run's retry budget) when other work shared the CPU.
        ``one_core``: wrk and the processes under test on the last CPU alone."""
        is_gateway = server.name.startswith("gateway")
        limit = self.args.noise_threshold
        again = RERUNS_PER_RUN
        while True:
            self.settle()
            sample = measure.run_once(
                server.url + self.path, connections, seconds, load, self.probe(server),
                self.client if is_gateway else None,
                max(os.sched_getaffinity(0)) if one_core else None,
            )  # fmt: skip
            if ledger is not None:
                ledger.saw(sample["ok"], connections, int(sample["socket_errors"]))
            if not server.alive():
                raise ServerFailed(f"{server.name} died during the run; see {server.log}")
            sample["noisy"] = sample["foreign_cores"] > limit
            if warmup or not sample["noisy"] or self.retries_left <= 0 or again <= 0:
                return sample
            self.retries_left -= 1
            self.noisy_reruns += 1
            again -= 1
            busy = sample["foreign_cores"]
            log(f"  {server.name} c{connections}: {busy:.2f} cores busy elsewhere; again")
            self.wait_quiet()

    def settle(self, limit_s: float = 2.0) -> None:
        """Before a run: until the last one's connections are torn down (measured: a c1
        run straight after c1024 saw p99 of 27 ms, the teardown still going on)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if procstat.machine_busy_cores(0.2) <= self.args.noise_threshold:
                return

    def wait_quiet(self) -> None:
        """Before a configuration: wait until the machine is idle (within the run's budget)."""
        budget = min(self.args.quiet_wait, self.args.quiet_budget - self.quiet_waited_s)
        if budget <= 0:
            return
        started = time.monotonic()
        busy = procstat.machine_busy_cores(0.5)
        while busy > self.args.noise_threshold and time.monotonic() - started < budget:
            log(f"  waiting for the machine to go quiet ({busy:.2f} cores busy elsewhere)")
            time.sleep(5.0)
            busy = procstat.machine_busy_cores(0.5)
        self.quiet_waited_s += time.monotonic() - started

    def redis_url(self, db: int) -> str:
        return self.redis.url.rsplit("/", 1)[0] + f"/{db}"

    def ledger(self, accounts: int, db: int = 0) -> measure.Ledger:
        book = measure.Ledger(self.redis_url(db), SHARDS, self.accounts[:accounts])
        book.start()
        return book

    def main_comparison(self, names: list[str], out: dict[str, Any]) -> None:
        """Profile every configuration into ``out``, interleaved.

        All of them are started at once (idle, they cost nothing) and measured in
        rounds: each round runs each configuration once, in a rotating order, so
        a change in the machine's background load between minutes falls on all of
        them alike and the ratios stay honest. Each gateway has a Redis database
        of its own (its accounts, its usage streams), so that its exactness check
        sees its calls only.
        """
        p, accounts = self.plan, self.args.main_accounts
        load = self.load(accounts)
        live: dict[str, tuple[Server, measure.Ledger | None]] = {}
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
        try:
            gateways = 0
            for name in names:
                log(f"{name}: starting")
                db = 0
                if name.startswith("gateway"):
                    gateways += 1
                    db = gateways
                    redis_side.provision(self.redis_url(db), self.accounts[:accounts])
                try:
                    server = self.start(name, db)
                except ServerFailed as exc:
                    log(f"{name}: FAILED: {exc}")
                    out[name] = {"status": "failed", "error": str(exc)}
                    continue
                book = self.ledger(accounts, db) if db else None
                live[name] = (server, book)
                samples[name] = {phase: [] for phase in PHASES}
                out[name] = {"status": "ok", "rss_kb": {"start": procstat.rss_kb(server.pid)}}
            self.wait_quiet()
            for name in list(live):
                self.step(name, live, out, 64, p.warmup_s, load, None)
                if name in live:
                    out[name]["rss_kb"]["after_warmup"] = procstat.rss_kb(live[name][0].pid)
            for phase, (connections, one_core) in PHASES.items():
                runs, seconds = (p.runs, p.run_s) if connections == 64 else (p.c1_runs, p.c1_run_s)
                for round_ in range(runs):
                    self.wait_quiet()
                    order = list(live)
                    for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
                        into = samples[name][phase]
                        self.step(name, live, out, connections, seconds, load, into, one_core)
            for name, (server, book) in live.items():
                every = [s for phase in PHASES for s in samples[name][phase]]
                out[name].update(
                    processes=procstat.process_count(server.pid),
                    **{phase: measure.summary(samples[name][phase]) for phase in PHASES},
                    errors=measure.error_totals(every),
                    samples=samples[name],
                )
                rss = out[name]["rss_kb"]
                rss["end"] = procstat.rss_kb(server.pid)
                rss["samples"] = [s.get("rss_kb") for s in every]
                if book is not None:
                    out[name]["exactness"] = book.verify(server.url, self.path)
                log(f"{name}: {describe(out[name])}")
        finally:
            for server, _ in live.values():
                if server is not self.upstream:
                    server.stop()

    def step(
        self,
        name: str,
        live: dict[str, tuple[Server, measure.Ledger | None]],
        out: dict[str, Any],
        connections: int,
        seconds: int,
        load: wrk.Load,
        into: list[dict[str, Any]] | None,
        one_core: bool = False,
    ) -> None:
        """One run of a live configuration; a failure takes it out of the comparison."""
        server, book = live[name]
        try:
            sample = self.run(
                server, connections, seconds, load, book, warmup=into is None, one_core=one_core
            )
        except (ServerFailed, wrk.WrkError, OSError) as exc:
            log(f"{name}: FAILED: {exc}")
            out[name] = {"status": "failed", "error": str(exc)}
            del live[name]
            if server is not self.upstream:
                server.stop()
            return
        if into is not None:
            into.append(sample)

    # -- the sweep --------------------------------------------------------------------

    def sweep_points(
        self,
        server: Server,
        connections: Sequence[int],
        load: wrk.Load,
        ledger: measure.Ledger | None,
        reference: wrk.Load | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Each concurrency warmed up, then all measured in rounds (``sweep_order``), so
        that a change in the machine's speed falls on every point alike (their ratios
        are targets); the points in the order of ``connections``.

        ``reference``: after the rounds, ``Plan.reference_pairs`` pairs of runs at 64
        connections, one with ``load`` and one with this load (one key), on the same
        server, in turn first and second (``pair_order``); the c64 point carries their
        medians (``paired_rps``, ``reference_rps``) and each pair's ratio
        (``reference_ratios``). "Many accounts / one account" is a 10 % target: the runs
        it compares are seconds apart, and enough of them that the machine's noise (on
        the 2-core VM a run of a few seconds moved 15 % either way) does not decide it."""
        p = self.plan
        self.wait_quiet()
        for c in connections:
            self.run(server, c, p.sweep_warmup_s, load, ledger, warmup=True)
        samples: dict[int, list[dict[str, Any]]] = {c: [] for c in connections}
        for c in sweep_order(connections, p.sweep_runs):
            samples[c].append(self.run(server, c, p.sweep_run_s, load, ledger))
        paired: dict[str, Any] = {}
        if reference is not None and REFERENCE_CONNECTIONS in connections:
            paired = self.reference_pairs(server, load, reference, ledger)
        for c in connections:
            point = measure.summary(samples[c])
            point["connections"] = c
            point["rss_kb"] = samples[c][-1].get("rss_kb")
            if c == REFERENCE_CONNECTIONS:
                point.update(paired)
            yield point

    def reference_pairs(
        self, server: Server, load: wrk.Load, reference: wrk.Load, ledger: measure.Ledger | None
    ) -> dict[str, Any]:
        """``load`` against ``reference`` at 64 connections, pair by pair (``sweep_points``)."""
        p, c = self.plan, REFERENCE_CONNECTIONS
        self.run(server, c, p.sweep_warmup_s, reference, ledger, warmup=True)
        ours: list[dict[str, Any]] = []
        theirs: list[dict[str, Any]] = []
        for ours_first in pair_order(p.reference_pairs):
            for is_ours in (ours_first, not ours_first):
                sample = self.run(server, c, p.sweep_run_s, load if is_ours else reference, ledger)
                (ours if is_ours else theirs).append(sample)
        ratios = [stats.ratio(a["rps"], b["rps"]) for a, b in zip(ours, theirs, strict=True)]
        return {
            "paired_rps": measure.summary(ours)["rps"],
            "reference_rps": measure.summary(theirs)["rps"],
            "reference_ratios": [r for r in ratios if r is not None],
        }

    def fill_key_cache(
        self, server: Server, accounts: int, ledger: measure.Ledger
    ) -> dict[str, Any]:
        """Every key sent, in order, before a block of many accounts is measured: a
        gateway that has served these accounts for a while holds their keys (its cache
        sized for them), and the block measures that, not a cache filling up (uniform
        picks would take ~14 million calls to bring all of a million keys).

        The first run is measured on its own when each of its calls brings a key the
        gateway has not seen yet (``first_sight_rps``): what a cold start costs. Then
        whole passes, from the first key, until the gateway has missed every key once
        (its miss counter: a key is missed once, as nothing is evicted)."""
        p = self.plan
        load = self.load(accounts, "sequence", sweep=True)
        misses = key_cache_counts(server).get("miss", 0.0)

        def seen() -> int:
            return int(key_cache_counts(server).get("miss", 0.0) - misses)

        self.wait_quiet()
        first = self.run(server, REFERENCE_CONNECTIONS, p.sweep_run_s, load, ledger)
        out: dict[str, Any] = {"fill_s": p.sweep_run_s}
        if first["requests"] <= accounts:
            out["first_sight_rps"] = first["rps"]
        # A pass starts again at the first key; wrk's two threads each take every
        # other key, so the margin covers one thread running slower than the other.
        seconds = math.ceil(1.3 * accounts / first["rps"])
        for _ in range(FILL_PASSES):
            if seen() >= accounts:
                break
            self.run(server, REFERENCE_CONNECTIONS, seconds, load, ledger, warmup=True)
            out["fill_s"] += seconds
        out["keys_seen"] = seen()
        log(
            f"sweep gateway {accounts:,} accounts: {out['keys_seen']:,} keys cached in "
            f"{out['fill_s']} s"
            + (f" (first sight: {first['rps']:,.0f} req/s)" if "first_sight_rps" in out else "")
        )
        return out

    def sweep(self, failed: set[str], out: dict[str, Any]) -> None:
        """Sweep concurrency and accounts into ``out`` (filled as it goes)."""
        p = self.plan
        concurrency: list[dict[str, Any]] = out.setdefault("concurrency", [])
        for name in p.sweep_baselines:
            if name in failed:
                continue
            try:
                with self.running(name) as server:
                    load = self.load(1, sweep=True)
                    for point in self.sweep_points(server, p.sweep_concurrency, load, None):
                        concurrency.append({"configuration": name, "accounts": 1, **point})
                        rps, p99, c = point["rps"], point["p99_ms"], point["connections"]
                        log(f"sweep {name} c{c}: {rps:,.0f} req/s, p99 {p99:.2f} ms")
            except (ServerFailed, wrk.WrkError, OSError) as exc:
                log(f"sweep {name}: FAILED: {exc}")
        gateway: list[dict[str, Any]] = out.setdefault("gateway", [])
        exactness: list[dict[str, Any]] = out.setdefault("exactness", [])
        if "gateway" not in failed and not self.args.skip_gateway:
            for accounts in p.sweep_accounts:
                self.provision(accounts)
                try:
                    with self.running("gateway") as server:
                        book = self.ledger(accounts)
                        rss_cold = procstat.rss_kb(server.pid)
                        warm = self.fill_key_cache(server, accounts, book) if accounts > 1 else {}
                        rss_start = procstat.rss_kb(server.pid)
                        cache_before = key_cache_counts(server)
                        for dist in ("uniform",) if accounts == 1 else ("uniform", "zipf"):
                            load = self.load(accounts, dist, sweep=True)
                            one = self.load(1, sweep=True) if accounts > 1 else None
                            points = self.sweep_points(
                                server, p.sweep_concurrency, load, book, reference=one
                            )
                            for point in points:
                                gateway.append(
                                    {"configuration": "gateway", "accounts": accounts,
                                     "distribution": dist, **point}
                                )  # fmt: skip
                                log(
                                    f"sweep gateway {accounts:,} accounts {dist} "
                                    f"c{point['connections']}: {point['rps']:,.0f} req/s, "
                                    f"p99 {point['p99_ms']:.2f} ms"
                                )
                        cache_after = key_cache_counts(server)
                        rss_end = procstat.rss_kb(server.pid)
                        check = book.verify(server.url, self.path)
                        exactness.append(
                            {
                                "accounts": accounts,
                                "rss_kb_cold": rss_cold,
                                "rss_kb_start": rss_start,
                                "rss_kb_end": rss_end,
                                **warm,
                                "key_cache": {
                                    k: cache_after[k] - cache_before[k] for k in cache_after
                                },
                                **check,
                            }
                        )
                        log(f"sweep gateway {accounts:,} accounts: exact: {check['exact']}")
                except (ServerFailed, wrk.WrkError, OSError) as exc:
                    log(f"sweep gateway {accounts:,} accounts: FAILED: {exc}")
                    exactness.append({"accounts": accounts, "error": str(exc), "exact": False})
