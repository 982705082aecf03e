"""`make bench`: the metering gateway side by side with what it competes against.

    python -m loadtests.bench [--quick] [--skip-sweep] [--only nginx,gateway ...]

One run, one machine, every configuration measured the same way with wrk:

1. ``upstream``   the echo upstream alone: the limit of this machine
2. ``nginx``      nginx as a plain reverse proxy with upstream keep-alive (1 worker;
                  ``nginx-2w``: 2 workers, the comparison for the 2-worker gateway)
3. ``aiohttp``    the plain aiohttp reverse proxy (``loadtests/plain_proxy.py``)
4. ``gateway``    our gateway, exact metering on every call, 1 worker;
                  ``gateway-2w``: one worker per core

Each is warmed up, then measured several times at 64 connections and at 1;
medians are reported. Then a sweep: throughput and p99 against concurrency
(1 .. 1,024) and, for the gateway, against the number of accounts (1, 1,000,
1,000,000) with keys picked uniformly or Zipf. Results go to
``loadtests/results/`` (JSON, Markdown, PNG), see ``report.py``.

Redis runs from a temporary folder (``meter.local_servers``); the accounts are
written straight into it (``redis_side.py``): the gateway never needs Postgres.
The measuring itself is ``harness.py``; this module is the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from meter import open_files, system_needs

from . import keyspace, report, servers
from .harness import DEFAULT_VARIANTS, FULL, MAIN_CONFIGS, QUICK, REDIS_AOF, SHARDS, Bench, log

DEFAULT_PATH = "/v1/bench"  # priced by the default route of the price table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--quick", action="store_true", help="short runs, fewer sweep points (~3 minutes)"
    )
    ap.add_argument("--skip-sweep", action="store_true", help="only the side-by-side comparison")
    ap.add_argument(
        "--skip-gateway", action="store_true", help="measure only the reference servers"
    )
    ap.add_argument(
        "--only", default="",
        help=f"comma list out of {','.join(MAIN_CONFIGS)} and the variants' names",
    )  # fmt: skip
    ap.add_argument(
        "--variant", action="append", default=[], metavar="NAME:SETTING=VALUE[,...]",
        help="also measure the gateway (1 worker) with these METER_* settings, e.g. "
        "gateway-big-pool:METER_UPSTREAM_POOL_SIZE=1024 (repeatable), or another checkout's "
        "gateway: gateway-old:SOURCE=/path/to/checkout",
    )  # fmt: skip
    ap.add_argument(
        "--path", default=DEFAULT_PATH, help="request path (its price comes from the table)"
    )
    ap.add_argument(
        "--main-accounts", type=int, default=1, help="accounts behind the comparison's load"
    )
    ap.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="workers of gateway-2w"
    )
    ap.add_argument("--zipf-s", type=float, default=keyspace.DEFAULT_ZIPF_S)
    ap.add_argument(
        "--redis-aof", action="store_true",
        help="Redis with the persistence the README recommends (appendonly yes, appendfsync "
        "everysec) instead of none",
    )  # fmt: skip
    ap.add_argument(
        "--gateway-env", action="append", default=[], metavar="NAME=VALUE",
        help="extra METER_* setting for the gateway (repeatable)",
    )  # fmt: skip
    ap.add_argument("--results-dir", type=Path, default=Path(__file__).with_name("results"))
    ap.add_argument(
        "--noise-threshold", type=float, default=0.35, metavar="CORES",
        help="a run during which other processes used more CPU than this is run again",
    )  # fmt: skip
    ap.add_argument(
        "--noise-retries", type=int, default=None, help="re-runs allowed in the whole run"
    )
    ap.add_argument(
        "--quiet-wait", type=float, default=60.0, metavar="SECONDS",
        help="before each configuration, wait up to this long for other work to stop",
    )  # fmt: skip
    ap.add_argument(
        "--quiet-budget", type=float, default=None, metavar="SECONDS",
        help="at most this much waiting in the whole run (default 300, quick 60)",
    )  # fmt: skip
    ap.add_argument(
        "--keep-tmp", action="store_true", help="keep the temporary folder (logs, configs)"
    )
    args = ap.parse_args(argv)
    args.gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    args.variants = dict(DEFAULT_VARIANTS)
    args.own_variants = []
    for spec in args.variant:
        name, _, settings = spec.partition(":")
        if not name.startswith("gateway-") or name in MAIN_CONFIGS or "=" not in settings:
            raise SystemExit(f"bench: --variant {spec!r}: want gateway-NAME:SETTING=VALUE[,...]")
        args.variants[name] = dict(item.split("=", 1) for item in settings.split(","))
        args.own_variants.append(name)
    return args


def selected(args: argparse.Namespace) -> list[str]:
    default = [*MAIN_CONFIGS, *({} if args.quick else DEFAULT_VARIANTS), *args.own_variants]
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(dict.fromkeys(default))
    unknown = set(names) - {*MAIN_CONFIGS, *args.variants}
    if unknown:
        raise SystemExit(f"bench: unknown configuration(s): {', '.join(sorted(unknown))}")
    if args.skip_gateway:
        names = [n for n in names if not n.startswith("gateway")]
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.noise_retries is None:
        args.noise_retries = 6 if args.quick else 24
    if args.quiet_budget is None:
        args.quiet_budget = 60.0 if args.quick else 300.0
    if args.only:
        plan = dataclasses.replace(
            plan, sweep_baselines=tuple(n for n in plan.sweep_baselines if n in selected(args))
        )
    names = selected(args)
    missing = system_needs.check("bench")  # `make bench` installs them first
    if missing:
        raise SystemExit(missing)
    nofile = open_files.raise_limit(65536)  # wrk and the proxies: a descriptor per connection
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="meter-bench-"))
    os.chmod(folder, 0o755)
    log(f"bench ({'quick' if args.quick else 'full'}): work folder {folder}, open files {nofile}")
    results: dict[str, Any] = {
        "plan": dataclasses.asdict(plan),
        "path": args.path,
        "shards": SHARDS,
        "redis_persistence": REDIS_AOF if args.redis_aof else "none",
        "variants": {n: args.variants[n] for n in names if n in args.variants},
    }
    try:
        bench = Bench(args, plan, folder)
        try:
            configurations = results.setdefault("configurations", {})
            bench.main_comparison(names, configurations)
            failed = {n for n, r in configurations.items() if r.get("status") != "ok"}
            failed |= {n for n in MAIN_CONFIGS if n not in names}
            if not args.skip_sweep:
                bench.sweep(failed, results.setdefault("sweep", {}))
        except Exception:  # keep what was measured; say why the rest is missing
            results["aborted"] = traceback.format_exc()
            log(f"ABORTED:\n{results['aborted']}")
        finally:
            results["provisioning_s"] = bench.provisioning_s
            results["noise"] = {
                "threshold_cores": args.noise_threshold,
                "reruns": bench.noisy_reruns,
                "waited_for_quiet_s": bench.quiet_waited_s,
            }
            bench.close()
    finally:
        if not args.keep_tmp:
            shutil.rmtree(folder, ignore_errors=True)
    results["duration_s"] = round(time.monotonic() - started, 1)
    written = report.write(results, args, args.results_dir)
    log(f"done in {results['duration_s']:.0f}s: {', '.join(str(p) for p in written)}")
    print(written[1].read_text())
    return exit_code(results, args)


def exit_code(results: dict[str, Any], args: argparse.Namespace) -> int:
    """1 when a configuration failed or answered errors, or the metering was not exact."""
    configs = results.get("configurations", {})
    problems: list[str] = []
    if results.get("aborted"):
        problems.append("the run was aborted: " + results["aborted"].strip().splitlines()[-1])
    for name, r in configs.items():
        if r.get("status") != "ok":
            problems.append(f"{name}: {r.get('error', 'failed').splitlines()[0]}")
            continue
        errors = r["errors"]
        if errors["non_2xx"] or errors["socket"]:
            problems.append(
                f"{name}: {errors['non_2xx']:,} non-2xx answers and {errors['socket']:,} socket "
                f"errors in {errors['requests']:,} responses"
            )
        if "exactness" in r and not r["exactness"]["exact"]:
            failed = [k for k, ok in r["exactness"]["checks"].items() if not ok]
            refusal = r["exactness"].get("probe_first_refusal")
            problems.append(
                f"{name}: metering not shown exact ({', '.join(failed)})"
                + (f"; the probe got {refusal[:200]!r}" if refusal else "")
            )
    for check in results.get("sweep", {}).get("exactness", []):
        if not check.get("exact"):
            problems.append(f"sweep with {check['accounts']:,} accounts: not exact or failed")
    for p in problems:
        print(f"bench: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    servers.run_command(main)
