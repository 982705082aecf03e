"""Accounts for the locust file: many customers, a few of them at their limits.

    python -m loadtests.seed --admin http://127.0.0.1:8081 --token TOKEN    # through the admin API
    python -m loadtests.seed --redis redis://127.0.0.1:6379/0               # straight into Redis

Through the admin API (what `meter dev` runs) the accounts exist in Postgres
too, so the ledger worker books their usage like any other. Straight into
Redis is for a bare gateway with no admin API and no ledger, as in the
benchmark. Either way a TSV of ``key<TAB>kind`` is written for
``locustfile.py``; the kinds:

- ``normal``  plenty of credits
- ``low``     a few cents: variable-cost calls (which reserve their maximum) are
              refused with 402 at once, cheap ones until the money runs out
- ``capped``  a tiny daily hard limit: 429 once it is reached
"""

from __future__ import annotations

import argparse
import json
import random
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import keyspace, redis_side

DEFAULT_OUT = Path(__file__).with_name("results") / "tmp" / "locust-keys.tsv"
NORMAL_CREDITS = 1_000_000_000  # $1,000
LOW_CREDITS = 50_000  # $0.05: less than one variable-cost reservation
CAPPED_DAILY_LIMIT = 20_000  # $0.02 a day


def kinds(count: int, low_share: float, capped_share: float, seed: int = 5) -> list[str]:
    """A kind per account, drawn with the given shares (the same for the same seed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        u = rng.random()
        out.append(
            "low" if u < low_share else "capped" if u < low_share + capped_share else "normal"
        )
    return out


def seed_redis(url: str, count: int, shards: int, kind_of: list[str]) -> list[str]:
    accounts = list(keyspace.accounts(count, shards, seed=11))
    for kind in ("normal", "low", "capped"):
        group = [a for a, k in zip(accounts, kind_of, strict=True) if k == kind]
        if not group:
            continue
        config = redis_side.CONFIG
        if kind == "capped":
            config = replace(config, daily_hard_limit=CAPPED_DAILY_LIMIT)
        balance = LOW_CREDITS if kind == "low" else NORMAL_CREDITS
        redis_side.provision(url, group, balance=balance, config=config)
    return [a.key for a in accounts]


def _call(base: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        base.rstrip("/") + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def _one_account(base: str, token: str, index: int, kind: str) -> str:
    account = _call(base, token, "POST", "/v1/accounts", {"name": f"locust customer {index}"})
    project = _call(base, token, "POST", f"/v1/accounts/{account['id']}/projects", {"name": "api"})
    key = _call(base, token, "POST", f"/v1/projects/{project['id']}/keys")
    amount = LOW_CREDITS if kind == "low" else NORMAL_CREDITS
    credit = {"amount": amount, "description": "locust seed", "idempotency_key": f"seed-{index}"}
    _call(base, token, "POST", f"/v1/accounts/{account['id']}/credits", credit)
    if kind == "capped":
        limits = {
            "daily_hard_limit": CAPPED_DAILY_LIMIT,
            "overage_line": 0,
            "daily_notify_threshold": None,
        }
        _call(base, token, "PUT", f"/v1/accounts/{account['id']}/limits", limits)
    return str(key["key"])


def seed_admin(base: str, token: str, kind_of: list[str], parallel: int = 8) -> list[str]:
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda ik: _one_account(base, token, *ik), enumerate(kind_of)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.seed", description=__doc__.split("\n\n")[0]
    )
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--admin", metavar="URL", help="the admin API (with --token)")
    where.add_argument("--redis", metavar="URL", help="the gateway's Redis (no Postgres involved)")
    ap.add_argument("--token", default="", help="admin API token (METER_ADMIN_TOKEN)")
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument(
        "--shards", type=int, default=16, help="the gateway's METER_SHARDS (--redis only)"
    )
    ap.add_argument(
        "--low-share", type=float, default=0.05, help="share of accounts nearly out of money"
    )
    ap.add_argument("--capped-share", type=float, default=0.05, help="share at a tiny daily limit")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    kind_of = kinds(args.accounts, args.low_share, args.capped_share)
    if args.admin:
        if not args.token:
            raise SystemExit("seed: --admin needs --token (the METER_ADMIN_TOKEN)")
        api_keys = seed_admin(args.admin, args.token, kind_of)
    else:
        api_keys = seed_redis(args.redis, args.accounts, args.shards, kind_of)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "".join(f"{k}\t{kind}\n" for k, kind in zip(api_keys, kind_of, strict=True))
    )
    counts = {k: kind_of.count(k) for k in ("normal", "low", "capped")}
    print(f"seed: {len(api_keys)} accounts {counts}; keys in {args.out}")


if __name__ == "__main__":
    main()
