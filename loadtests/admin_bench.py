"""`make admin-bench`: the admin API's CPU per request, of one checkout or two side by side.

    .venv/bin/python -m loadtests.admin_bench [--requests 20000] [--concurrency 16]
    .venv/bin/python -m loadtests.admin_bench --compare /path/to/old/checkout [--rounds 3]

Starts a Redis and a PostgreSQL of its own (``meter.local_servers``), and for each
checkout measured (``--source``, default this one, named ``new``; ``--compare``,
named ``old``) a database and a Redis database of its own, migrated by that
checkout's ``meter migrate``, and its ``meter admin`` as a child process: this venv's
Python, the checkout's code (its tree first on ``PYTHONPATH`` and as the cwd),
settings from METER_* variables, the bootstrap token in ``METER_ADMIN_TOKEN``.

Each admin API is given ``--accounts`` accounts through its own API (a project,
limits and enough credits for a full page of transactions each) and a warm-up,
then every round sends ``--requests`` requests to each, ``--concurrency`` at a
time (aiohttp, keep-alive), one request class after the other
(``loadtests/admin_mix.py``). Each class is its own phase: the admin process's
CPU before and after it, divided by its requests, and its req/s and p50/p99
latency. The CPU is the kernel's run time of the process's threads, read to the
nanosecond (``procstat.run_ns``); utime + stime from ``/proc/<pid>/stat`` are the
same count in 10 ms ticks, kept beside it, too coarse for the turns below.

With two APIs, a phase sends the class to them by turns of about ``--turn``
seconds (A B, B A, A B, ...; the next round starts with the other; a turn's
requests are set from the class's rate in the warm-up, the same for both), so
that a change in the machine's speed falls on both alike: on this VM it moves
within seconds (loadtests/README.md, "The admin API"). Medians over the rounds
are reported, and the new/old ratio of each round beside the ratio of the
medians. A class during which other programs kept more than
``--noise-threshold`` cores busy (other sessions' test suites share this VM) is
measured again on both APIs, after waiting a little for the machine to go quiet.
Results: ``loadtests/results/admin-bench-latest.json`` and ``.md`` (overwritten).
Exit 1 when any request got another status than its class expects.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from meter import devstack, local_servers, system_needs
from meter.settings import Secret, Settings

from . import admin_mix, admin_report, procstat, provenance, servers
from .harness import log

ROOT = Path(__file__).resolve().parent.parent
RERUNS_PER_CLASS = 2  # so that a long burst of other work does not spend the whole budget
MIN_TURN = 50  # requests
MIN_TURNS = 10  # a class, each round, to each API


@dataclass
class Admin:
    """One admin API under test and what the bench gave it."""

    name: str
    tree: Path
    server: servers.Server
    token: str
    accounts: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Others:
    """The processes beside the admin API whose CPU a phase also reports."""

    postgres: int  # the postmaster: its backends are its children
    redis: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.admin_bench", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--source", type=Path, default=None, help="checkout whose admin API is measured "
        "(default: this one)",
    )  # fmt: skip
    ap.add_argument(
        "--compare", type=Path, default=None, metavar="OLD_CHECKOUT",
        help="also measure this checkout's admin API, interleaved, and report new/old",
    )  # fmt: skip
    ap.add_argument(
        "--requests", type=int, default=20_000,
        help="requests per round to each admin API, shared evenly by the request classes",
    )  # fmt: skip
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--turn", type=float, default=0.1, metavar="SECONDS",
        help="with --compare, a class goes to the APIs by turns of about this long",
    )  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--warmup", type=int, default=200, help="requests per class before the first round"
    )
    ap.add_argument("--accounts", type=int, default=8, help="accounts the requests go to")
    ap.add_argument(
        "--noise-threshold", type=float, default=0.35, metavar="CORES",
        help="a class during which other programs used more CPU than this is measured again",
    )  # fmt: skip
    ap.add_argument("--noise-retries", type=int, default=12, help="re-runs allowed in the run")
    ap.add_argument(
        "--quiet-budget", type=float, default=120.0, metavar="SECONDS",
        help="at most this much waiting for other work to end, in the whole run",
    )  # fmt: skip
    ap.add_argument("--results-dir", type=Path, default=Path(__file__).with_name("results"))
    ap.add_argument(
        "--keep-tmp", action="store_true", help="keep the temporary folder (logs, data)"
    )
    args = ap.parse_args(argv)
    if args.requests < len(admin_mix.CLASSES) or args.rounds < 1 or args.concurrency < 1:
        ap.error(f"want --requests >= {len(admin_mix.CLASSES)}, --rounds and --concurrency >= 1")
    for tree in (args.source, args.compare):
        if tree is not None and not (tree / "admin" / "service.py").is_file():
            ap.error(f"{tree} is not a checkout of meter (no admin/service.py)")
    return args


def checkouts(args: argparse.Namespace) -> dict[str, Path]:
    """Name -> tree, in the order of the first round."""
    new = (args.source or ROOT).resolve()
    return {"old": args.compare.resolve(), "new": new} if args.compare else {"new": new}


def describe_tree(tree: Path) -> dict[str, Any]:
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(tree), *cmd], capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "path": str(tree),
        "commit": git("rev-parse", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def run_in(tree: Path, env: dict[str, str], log_file: Path, *args: str) -> str:
    """``python args`` in ``tree`` as its services run there; its output (raises on failure)."""
    tree, env = servers.checkout(env, tree)
    done = subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )
    with open(log_file, "a") as out:
        out.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise servers.ServerFailed(f"{' '.join(args)} in {tree} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def start_admin(
    folder: Path,
    name: str,
    tree: Path,
    redis_url: str,
    pg: local_servers.PostgresServer,
) -> Admin:
    """A database of its own, migrated by the checkout itself, then its ``meter admin``."""
    database = f"meter_{name}"
    asyncio.run(pg.execute(f"create database {database}"))
    token = secrets.token_urlsafe(24)
    settings = Settings.from_env(
        {}, redis_url=redis_url, database_url=pg.url(database), admin_token=Secret(token)
    )
    env = devstack.child_environment(settings)
    logs = folder / f"{name}.log"
    run_in(tree, env, logs, "-m", "meter", "migrate")
    # The code that will run is the checkout's, not the installed one's.
    imported = run_in(tree, env, logs, "-c", "import admin, meter; print(admin.__file__)")
    if not Path(imported.strip()).resolve().is_relative_to(tree):
        raise servers.ServerFailed(f"{name}: the admin package came from {imported.strip()}")
    server = servers.start_admin(folder, env, name, tree)
    log(f"{name}: admin API of {tree} at {server.url} (pid {server.pid})")
    return Admin(name, tree, server, token)


@contextmanager
def admins(folder: Path, trees: dict[str, Path]) -> Iterator[tuple[list[Admin], Others]]:
    with ExitStack() as stack:
        redis, pg = stack.enter_context(local_servers.running(folder, stop_with_parent=True))
        started: list[Admin] = []
        for db, (name, tree) in enumerate(trees.items()):
            url = f"redis://127.0.0.1:{redis.port}/{db}"
            started.append(start_admin(folder, name, tree, url, pg))
            stack.callback(started[-1].server.stop)  # stopped before Redis and Postgres
        yield started, Others(postgres=pg.proc.pid, redis=redis.proc.pid)


async def send_slice(
    admin: Admin,
    client: aiohttp.ClientSession,
    requests: list[admin_mix.Request],
    expected: int,
    concurrency: int,
    others: Others,
    into: admin_report.Tally,
) -> None:
    """``requests`` to ``admin``; what they cost and how they were answered, added up."""
    pids = (admin.server.pid, others.postgres, others.redis)
    before = [procstat.run_ns(p) for p in pids]
    ticks0 = procstat.cpu_seconds(admin.server.pid)
    client0, busy0 = time.process_time(), procstat.system_busy_seconds()
    sent = await admin_mix.send(client, admin.server.url, requests, expected, concurrency)
    client_s, busy = time.process_time() - client0, procstat.system_busy_seconds() - busy0
    ticks = procstat.cpu_seconds(admin.server.pid) - ticks0
    after = [procstat.run_ns(p) for p in pids]
    cpu, postgres, redis = (
        procstat.run_seconds_between(b, a) for b, a in zip(before, after, strict=True)
    )
    if not admin.server.alive():
        raise servers.ServerFailed(f"{admin.name} exited: {servers.log_tail(admin.server.log)}")
    into.slices += 1
    into.wall_s += sent.wall_s
    into.cpu_s += cpu
    into.cpu_ticks_s += ticks
    into.postgres_s += postgres
    into.redis_s += redis
    into.client_s += client_s
    into.foreign_s += busy - cpu - postgres - redis - client_s  # as loadtests.measure counts
    into.latencies_s += sent.latencies_s
    into.statuses.update(sent.statuses)
    into.surprises += sent.surprises


async def phase(
    admins: list[Admin],
    clients: dict[str, aiohttp.ClientSession],
    kind: str,
    count: int,
    slice_size: int,
    tag: str,
    args: argparse.Namespace,
    others: Others,
) -> dict[str, dict[str, Any]]:
    """``count`` requests of class ``kind`` to each of ``admins``, in slices of about
    ``slice_size`` that take turns (A B, B A, A B, ...): name -> sample."""
    tallies = {a.name: admin_report.Tally() for a in admins}
    sizes = admin_mix.chunks(count, max(1, round(count / slice_size)))
    done = 0
    for j, size in enumerate(sizes):
        for a in admins[j % len(admins) :] + admins[: j % len(admins)]:
            requests = [admin_mix.request(kind, done + i, a.accounts, tag) for i in range(size)]
            expected = admin_mix.EXPECTED[kind]
            await send_slice(
                a, clients[a.name], requests, expected, args.concurrency, others, tallies[a.name]
            )
        done += size
    return {name: admin_report.sample(t, admin_mix.EXPECTED[kind]) for name, t in tallies.items()}


@dataclass
class Noise:
    """When a phase shared the machine with other work: measured again, within a budget."""

    threshold_cores: float
    retries_left: int
    wait_left_s: float
    reruns: list[str] = field(default_factory=list)

    def again(self, what: str, samples: dict[str, dict[str, Any]], tries: int) -> bool:
        busy = max(s["foreign_cores"] or 0.0 for s in samples.values())
        if busy <= self.threshold_cores or self.retries_left <= 0 or tries >= RERUNS_PER_CLASS:
            return False
        self.retries_left -= 1
        self.reruns.append(f"{what}: {busy:.2f} cores busy elsewhere")
        log(f"  {self.reruns[-1]}; again")
        started = time.monotonic()  # then wait (a little) for the other work to end
        while self.wait_left_s > 0 and procstat.machine_busy_cores(0.5) > self.threshold_cores:
            time.sleep(2.0)
            self.wait_left_s -= time.monotonic() - started
            started = time.monotonic()
        return True


async def measure(
    args: argparse.Namespace, started: list[Admin], others: Others, noise: Noise
) -> list[Any]:
    """Provision, warm up, then the rounds: [{"order", "classes": {kind: {name: sample}}}]."""
    shares = admin_mix.chunks(args.requests, len(admin_mix.CLASSES))
    counts = dict(zip(admin_mix.CLASSES, shares, strict=True))
    clients = {a.name: admin_mix.session(a.token, args.concurrency) for a in started}
    rounds: list[Any] = []
    try:
        for a in started:
            entries = admin_mix.TRANSACTIONS_PAGE + 5
            a.accounts = await admin_mix.provision(
                clients[a.name], a.server.url, args.accounts, entries
            )
        turns: dict[str, int] = {}  # class -> requests a turn
        for kind in admin_mix.CLASSES:
            warm = await phase(started, clients, kind, args.warmup, args.warmup, "w", args, others)
            wrong = [s["surprises"] for s in warm.values() if s["unexpected"]]
            if wrong:
                raise SystemExit(f"admin_bench: {kind} in the warm-up: {wrong}")
            # Turns of a time, not a count: as short for a cheap class as for a dear one,
            # and at least MIN_TURNS of them, so that a blip of the machine's speed in one
            # turn moves a class's figure by a little only.
            rate = min(s["rps"] or 0.0 for s in warm.values())
            most = max(MIN_TURN, counts[kind] // MIN_TURNS)
            alone = len(started) == 1  # then a turn would only add readings of /proc
            turns[kind] = (
                counts[kind] if alone else max(MIN_TURN, min(most, round(rate * args.turn)))
            )
        log(f"{args.accounts} accounts each, warmed up ({args.warmup} a class); measuring")
        attempts = itertools.count()
        for r in range(args.rounds):
            order = started[r % len(started) :] + started[: r % len(started)]
            this: dict[str, Any] = {"order": [a.name for a in order], "classes": {}}
            for kind in admin_mix.CLASSES:
                for tries in itertools.count():  # all of it again on every API when noisy
                    tag = str(next(attempts))  # credits' idempotency keys: new each time
                    samples = await phase(
                        order, clients, kind, counts[kind], turns[kind], tag, args, others
                    )
                    if not noise.again(f"round {r + 1} {kind}", samples, tries):
                        break
                this["classes"][kind] = samples
            rounds.append(this)
            log(f"round {r + 1}/{args.rounds}: {admin_report.round_line(this)}")
    finally:
        for client in clients.values():
            await client.close()
    return rounds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = system_needs.check("admin-bench")  # `make admin-bench` installs them first
    if missing:
        raise SystemExit(missing)
    trees = checkouts(args)
    folder = Path(tempfile.mkdtemp(prefix="meter-admin-bench-"))
    folder.chmod(0o755)  # PostgreSQL runs as postgres when we are root
    started_at = time.monotonic()
    noise = Noise(args.noise_threshold, args.noise_retries, args.quiet_budget)
    try:
        with admins(folder, trees) as (started, others):
            rounds = uvloop.run(measure(args, started, others, noise))
    finally:
        if not args.keep_tmp:
            shutil.rmtree(folder, ignore_errors=True)
    results = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(
            ["python -m loadtests.admin_bench", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": provenance.machine(),
        "versions": provenance.versions(),
        "checkouts": {name: describe_tree(tree) for name, tree in trees.items()},
        "requests_per_round": args.requests,
        "concurrency": args.concurrency,
        "turn_s": args.turn,
        "rounds": rounds,
        "warmup_per_class": args.warmup,
        "accounts": args.accounts,
        "noise": {"threshold_cores": args.noise_threshold, "reruns": noise.reruns},
        "duration_s": round(time.monotonic() - started_at, 1),
    }
    results["summary"] = admin_report.summarize(rounds, list(trees))
    if "old" in trees:
        results["ratios"] = admin_report.ratios(rounds, results["summary"])
    written = admin_report.write(results, args.results_dir)
    log(f"done in {results['duration_s']:.0f}s: {', '.join(str(p) for p in written)}")
    print(written[1].read_text())
    wrong = admin_report.unexpected(results["summary"])
    for line in wrong:
        print(f"admin_bench: {line}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    servers.run_command(main)
