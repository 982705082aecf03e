"""The benchmark harness: wrk parsing, the arithmetic, key picking, reports.

Its pure parts are tested on captured output; the one piece that only wrk can
run, ``wrk_keys.lua``, is driven through real wrk against a local server that
counts the keys it receives. No gateway is measured here; `make bench` does that.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.metrics import GatewayMetrics

# loadtests/ is run from the checkout (`python -m loadtests.bench`), not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import (
    admin_bench,
    admin_mix,
    admin_report,
    bench,
    figures,
    harness,
    key_lookup_bench,
    keyspace,
    measure,
    procstat,
    recharge_bench,
    recharge_report,
    redis_side,
    report,
    runs,
    servers,
    sse_bench,
    stats,
    wrk,
)
from meter import apikeys

ROOT = Path(__file__).resolve().parent.parent  # the checkout: where load-test commands run
WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:40001/v1/bench
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.33ms    2.94ms  84.09ms   94.78%
    Req/Sec     5.23k   598.87     6.07k    78.00%
  Latency Distribution
     50%    5.65ms
     75%    5.95ms
     90%    7.61ms
     99%   16.14ms
  52050 requests in 5.00s, 11.12MB read
  Socket errors: connect 0, read 3, write 0, timeout 7
  Non-2xx or 3xx responses: 50
Requests/sec:  10402.61
Transfer/sec:      2.22MB
"""

WRK_OUTPUT_FAST = """\
Running 1s test @ http://127.0.0.1:40000/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    26.00us   14.61us   1.20s    99.01%
    Req/Sec    36.98k     1.53k   38.32k    90.00%
  Latency Distribution
     50%   19.00us
     75%   22.00us
     90%   31.00us
     99%  592.00us
  36800 requests in 1.00s, 5.30MB read
Requests/sec:  36798.42
Transfer/sec:      5.30MB
"""


# -- wrk output ---------------------------------------------------------------------


def test_parse_wrk_report() -> None:
    r = wrk.parse(WRK_OUTPUT)
    assert r.requests == 52050
    assert r.duration_s == 5.0
    assert r.rps == pytest.approx(10402.61)
    assert r.non_2xx == 50
    assert r.ok == 52000
    assert r.percentiles_ms == {50.0: 5.65, 75.0: 5.95, 90.0: 7.61, 99.0: 16.14}
    assert (r.p50_ms, r.p99_ms) == (5.65, 16.14)
    assert r.latency_avg_ms == 6.33 and r.latency_max_ms == 84.09
    assert r.socket_errors == {"connect": 0, "read": 3, "write": 0, "timeout": 7}
    assert r.errors == 10


def test_parse_wrk_report_in_microseconds_without_errors() -> None:
    r = wrk.parse(WRK_OUTPUT_FAST)
    assert r.p50_ms == pytest.approx(0.019)
    assert r.p99_ms == pytest.approx(0.592)
    assert r.latency_max_ms == pytest.approx(1200.0)
    assert r.non_2xx == 0 and r.socket_errors == {} and r.ok == 36800


@pytest.mark.parametrize(
    ("text", "ms"),
    [("850.00us", 0.85), ("1.23ms", 1.23), ("2.01s", 2010.0), ("1.50m", 90_000.0), ("7us", 0.007)],
)
def test_duration_units(text: str, ms: float) -> None:
    assert wrk.duration_ms(text) == pytest.approx(ms)


def test_unreadable_wrk_output_is_an_error() -> None:
    with pytest.raises(wrk.WrkError):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")
    with pytest.raises(ValueError):
        wrk.duration_ms("fast")


def test_wrk_command_uses_one_thread_per_connection_at_most_two() -> None:
    assert wrk.command("http://x/", 1, 5)[1:3] == ["-t1", "-c1"]
    assert wrk.command("http://x/", 1024, 5)[1:3] == ["-t2", "-c1024"]
    assert "--latency" in wrk.command("http://x/", 64, 2)


def test_wrk_command_runs_wrk_on_one_cpu_through_taskset() -> None:
    assert wrk.command("http://x/", 1, 5, cpu=1)[:4] == ["taskset", "-c", "1", "wrk"]
    assert wrk.command("http://x/", 1, 5)[0] == "wrk"


def _affinities(root: int) -> set[frozenset[int]]:
    return {
        frozenset(os.sched_getaffinity(int(tid)))
        for pid in procstat.tree(root)
        for tid in os.listdir(f"/proc/{pid}/task")
    }


def test_pinned_puts_every_thread_of_each_tree_on_one_cpu_then_back() -> None:
    # A process with a second thread and a child of its own, like a gateway's workers.
    script = (
        "import subprocess, sys, threading\n"
        "threading.Thread(target=sys.stdin.read, daemon=True).start()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
        " stdin=subprocess.PIPE)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "child.stdin.close(); child.wait()\n"
    )
    everywhere = frozenset(os.sched_getaffinity(0))
    cpu = max(everywhere)
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        tasks = sum(len(os.listdir(f"/proc/{pid}/task")) for pid in procstat.tree(proc.pid))
        assert len(procstat.tree(proc.pid)) == 2 and tasks >= 3
        assert _affinities(proc.pid) == {everywhere}
        with measure.pinned(measure.Probe({"proxy": proc.pid}), cpu):
            assert _affinities(proc.pid) == {frozenset({cpu})}
        assert _affinities(proc.pid) == {everywhere}
        with measure.pinned(measure.Probe({"proxy": proc.pid}), None):
            assert _affinities(proc.pid) == {everywhere}
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_load_environment_for_the_lua_script() -> None:
    env = wrk.Load(Path("/tmp/keys.txt"), "zipf", 1000, 1.1).environment(64)
    assert env == {
        "WRK_THREADS": "2",
        "WRK_KEYS_DYNAMIC": "0",
        "WRK_KEYS_FILE": "/tmp/keys.txt",
        "WRK_KEYS_DIST": "zipf",
        "WRK_KEYS_LIMIT": "1000",
        "WRK_ZIPF_S": "1.1",
    }
    assert wrk.Load().environment(1)["WRK_KEYS_FILE"] == ""
    assert wrk.Load().environment(1)["WRK_THREADS"] == "1"  # as wrk.command's -t
    assert wrk.Load(dynamic=True).environment(1)["WRK_KEYS_DYNAMIC"] == "1"


async def keys_wrk_sends(tmp_path: Path, load: wrk.Load, cpu: int | None = None) -> Counter[str]:
    """Run real wrk with ``wrk_keys.lua`` for a second; the Authorization headers it sent."""
    seen: Counter[str] = Counter()

    async def count(request: web.Request) -> web.Response:
        seen[request.headers.get("Authorization", "")] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", count)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        proc = await asyncio.create_subprocess_exec(
            *wrk.command(f"http://127.0.0.1:{port}/v1/bench", 2, 1, cpu=cpu),
            env={**os.environ, **load.environment(2)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        assert wrk.parse(out.decode()).requests >= sum(seen.values()) - 2 > 0
    finally:
        await runner.cleanup()
    return seen


async def test_wrk_sends_the_keys_of_the_file(tmp_path: Path) -> None:
    keys = [apikeys.generate() for _ in range(3)]
    path = keyspace.write_keys_file(tmp_path / "keys.txt", keys)
    bearer = {f"Bearer {k}" for k in keys}

    one_static = await keys_wrk_sends(tmp_path, wrk.Load(path, keys_limit=1))
    one_dynamic = await keys_wrk_sends(
        tmp_path, wrk.Load(path, keys_limit=1, dynamic=True), cpu=max(os.sched_getaffinity(0))
    )
    three = await keys_wrk_sends(tmp_path, wrk.Load(path, keys_limit=3))
    none = await keys_wrk_sends(tmp_path, wrk.Load())

    assert set(one_static) == set(one_dynamic) == {f"Bearer {keys[0]}"}
    assert set(three) == bearer  # uniform over the three: each is picked
    assert min(three.values()) > sum(three.values()) / 10
    assert set(none) == {""}


async def test_wrk_sends_the_keys_in_sequence_each_once_per_pass(tmp_path: Path) -> None:
    # Five keys, two threads: each thread sends all five in turn (5 and 2 share no
    # factor), so however fast each thread goes, no key is sent twice more than another.
    # Picked at random, the counts of a second's calls would spread by tens.
    keys = [apikeys.generate() for _ in range(5)]
    path = keyspace.write_keys_file(tmp_path / "keys.txt", keys)
    seen = await keys_wrk_sends(tmp_path, wrk.Load(path, "sequence"))
    assert set(seen) == {f"Bearer {k}" for k in keys}
    assert sum(seen.values()) > 100
    assert max(seen.values()) - min(seen.values()) <= 2


# -- arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([3.0, 1.0, 2.0], 2.0),
        ([4.0, 1.0, 2.0, 3.0], 2.5),
        ([None, 5.0, math.nan], 5.0),
        ([], None),
        ([None, math.nan], None),
    ],
)
def test_median(values: list[Any], expected: float | None) -> None:
    assert stats.median(values) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (30_000.0, 10_000.0, 3.0),
        (5.0, 50.0, 0.1),
        (None, 1.0, None),
        (1.0, None, None),
        (1.0, 0.0, None),
    ],
)
def test_ratio(a: float | None, b: float | None, expected: float | None) -> None:
    assert stats.ratio(a, b) == expected


def test_per_call_costs() -> None:
    assert stats.per_call_us(1.5, 30_000) == pytest.approx(50.0)
    assert stats.per_call_us(1.0, 0) is None
    assert stats.per_call(3_000, 30_000) == pytest.approx(0.1)
    assert stats.difference(0.5, 0.2) == pytest.approx(0.3)
    assert stats.difference(None, 0.2) is None


@pytest.mark.parametrize(
    ("measured", "op", "limit", "met"),
    [
        (3.1, ">=", 3.0, True),
        (2.9, ">=", 3.0, False),
        (0.2, "<=", 0.3, True),
        (None, "<=", 0.3, None),
    ],
)
def test_check_against_target(
    measured: float | None, op: str, limit: float, met: bool | None
) -> None:
    assert stats.check(measured, op, limit) is met


def test_summaries_take_medians_per_field_and_per_role() -> None:
    samples = [
        {"rps": 10.0, "cpu": {"proxy": 50.0, "redis": 5.0}},
        {"rps": 30.0, "cpu": {"proxy": 70.0}},
        {"rps": 20.0, "cpu": {"proxy": 60.0, "redis": 7.0}},
    ]
    assert stats.summarize(samples, ["rps", "missing"]) == {"rps": 20.0, "missing": None}
    assert stats.summarize_nested(samples, "cpu") == {"proxy": 60.0, "redis": 6.0}
    assert stats.within(90.0, 100.0, 0.1) is True
    assert stats.within(89.0, 100.0, 0.1) is False
    assert stats.growth_fraction(100.0, 105.0) == pytest.approx(0.05)


# -- keys and picking ---------------------------------------------------------------


def test_generated_keys_are_well_formed_unique_and_reproducible() -> None:
    keys = keyspace.generate_keys(2000, seed=7)
    assert all(apikeys.well_formed(k) for k in keys)
    assert len(set(keys)) == 2000
    assert keyspace.generate_keys(10, seed=7) == keys[:10]
    assert keyspace.generate_keys(10, seed=8) != keys[:10]


def test_accounts_carry_their_shard_and_ids() -> None:
    accounts = list(keyspace.accounts(5, shards=16))
    assert [a.index for a in accounts] == [0, 1, 2, 3, 4]
    assert accounts[3].account_id == "acct_bench000000000003"
    assert accounts[3].key_id == "key_bench000000000003"
    assert all(0 <= a.shard < 16 for a in accounts)
    assert [a.key for a in keyspace.accounts(5, 16, start=3)] == [a.key for a in accounts[3:]]


def test_zipf_cdf_is_increasing_and_ends_at_one() -> None:
    cdf = keyspace.zipf_cdf(1000, 0.99)
    assert cdf[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(cdf))
    # rank 1 gets 1 / H(n, s) of the traffic
    harmonic = sum(1 / k**0.99 for k in range(1, 1001))
    assert cdf[0] == pytest.approx(1 / harmonic)
    with pytest.raises(ValueError):
        keyspace.zipf_cdf(0)


@pytest.mark.parametrize(
    ("u", "index"), [(0.0, 0), (0.5, 0), (0.5000001, 1), (0.75, 1), (0.76, 2), (0.9999, 2)]
)
def test_pick_finds_the_first_rank_reaching_u(u: float, index: int) -> None:
    assert keyspace.pick([0.5, 0.75, 1.0], u) == index


def test_pick_uniform_covers_every_index() -> None:
    assert keyspace.pick_uniform(4, 0.0) == 0
    assert keyspace.pick_uniform(4, 0.2499) == 0
    assert keyspace.pick_uniform(4, 0.25) == 1
    assert keyspace.pick_uniform(4, 0.999999) == 3
    assert keyspace.pick_uniform(4, 1.0) == 3


def test_zipf_picking_follows_the_distribution() -> None:
    n, s, draws = 100, 1.0, 200_000
    picker = keyspace.KeyPicker(n, "zipf", s, rng=random.Random(1))
    counts = Counter(picker() for _ in range(draws))
    harmonic = sum(1 / k**s for k in range(1, n + 1))
    for rank in (1, 2, 10, 100):
        expected = draws / (rank**s * harmonic)
        assert counts[rank - 1] == pytest.approx(expected, rel=0.1)
    assert counts[0] > 1.8 * counts[1] and counts[0] > 90 * counts[99]


def test_uniform_picking_is_flat() -> None:
    picker = keyspace.KeyPicker(10, "uniform", rng=random.Random(2))
    counts = Counter(picker() for _ in range(100_000))
    assert set(counts) == set(range(10))
    assert max(counts.values()) / min(counts.values()) < 1.1
    with pytest.raises(ValueError):
        keyspace.KeyPicker(10, "pareto")


def test_the_lua_script_mirrors_the_python_picker() -> None:
    lua = wrk.LUA_SCRIPT.read_text()
    for needle in (
        "WRK_KEYS_FILE",
        "WRK_KEYS_DIST",
        "WRK_ZIPF_S",
        "WRK_KEYS_LIMIT",
        "1.0 / (k ^ s)",
    ):
        assert needle in lua
    assert "if cdf[mid] < u then lo = mid + 1 else hi = mid end" in lua  # bisect_left


# -- /proc and Redis parsing --------------------------------------------------------


def test_parse_proc_stat_with_an_awkward_command_name() -> None:
    text = "4242 (a b) c)) S 17 4242 4242 0 -1 4194560 1234 0 0 0 250 75 3 4 20 0 1 0 100 0 0"
    assert procstat.parse_stat(text) == (17, 325)
    assert procstat.parse_vmrss_kb("Name:\tx\nVmRSS:\t  51200 kB\nThreads:\t1\n") == 51200
    assert procstat.parse_vmrss_kb("Name:\tzombie\n") == 0


def test_run_time_between_two_readings_counts_threads_that_started_and_not_those_that_ended() -> (
    None
):
    assert procstat.parse_schedstat_ns("1234567890 5000 42\n") == 1_234_567_890
    before = {(1, 1): 4_000_000_000, (1, 2): 1_000_000_000}
    after = {(1, 1): 4_250_000_000, (1, 3): 50_000_000}  # thread 2 ended, thread 3 started
    assert procstat.run_seconds_between(before, after) == pytest.approx(0.3)


def test_run_time_of_a_process_agrees_with_its_utime_and_stime() -> None:
    """The nanosecond count and /proc/<pid>/stat's ticks are the same CPU."""
    me = os.getpid()
    before, ticks = procstat.run_ns(me), procstat.cpu_seconds(me)
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    ran = procstat.run_seconds_between(before, procstat.run_ns(me))
    assert ran == pytest.approx(procstat.cpu_seconds(me) - ticks, abs=0.03)


def test_commandstats_separate_scripts_external_and_executed() -> None:
    info = {
        "cmdstat_evalsha": {"calls": 100, "usec": 1},
        "cmdstat_hmget": {"calls": 100, "usec": 1},
        "cmdstat_xadd": {"calls": 100, "usec": 1},
        "cmdstat_hgetall": {"calls": 5, "usec": 1},
        "cmdstat_info": {"calls": 9, "usec": 1},
        "errorstat_ERR": {"count": 1},
    }
    inside = frozenset({"hmget", "xadd"})
    assert redis_side.parse_commandstats(info, inside) == (100, 105, 305)
    assert {"hmget", "xadd", "hincrby"} <= redis_side.commands_inside_scripts()


def test_counts_delta_leaves_out_the_harness_own_info_calls() -> None:
    before = redis_side.CommandCounts(10, 12, 50, 100)
    after = redis_side.CommandCounts(20, 23, 90, 112)
    assert redis_side.counts_delta(before, after) == redis_side.CommandCounts(10, 11, 40, 10)


def test_key_cache_counts_come_from_the_gateway_exposition() -> None:
    metrics = GatewayMetrics()
    metrics.key_hit.inc(7)
    metrics.key_miss.inc(1_000_000)
    counts = harness.key_cache_results(metrics.exposition().decode())
    assert counts == {"hit": 7.0, "miss": 1_000_000.0, "negative_hit": 0.0}


def test_resp_encoding() -> None:
    assert redis_side.resp("HGET", "k", 12) == b"*3\r\n$4\r\nHGET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert redis_side.resp(b"\x00") == b"*1\r\n$1\r\n\x00\r\n"


def test_nginx_config_keeps_upstream_connections_alive() -> None:
    conf = servers.nginx_config(Path("/tmp/n"), 8001, 9001, workers=2)
    assert "worker_processes 2;" in conf
    assert "server 127.0.0.1:9001;" in conf and "listen 127.0.0.1:8001" in conf
    assert "keepalive 512;" in conf and 'proxy_set_header Connection "";' in conf
    assert "proxy_http_version 1.1;" in conf and "access_log off;" in conf


# -- the report ---------------------------------------------------------------------


def _config(
    rps: float, p99_c1: float, proxy_us: float | None = 50.0, **extra: Any
) -> dict[str, Any]:
    c64 = {"rps": rps, "p50_ms": 1.0, "p99_ms": 3.0, "cpu_us_per_call": {"proxy": proxy_us}}
    c64.update(extra)
    return {
        "status": "ok",
        "processes": 1,
        "c64": c64,
        "c1": {"rps": 5000.0, "p50_ms": 0.1, "p99_ms": p99_c1, "cpu_us_per_call": {}},
        "c1_one_core": {"rps": 9000.0, "p50_ms": 0.05, "p99_ms": p99_c1 / 2, "cpu_us_per_call": {}},
        "rss_kb": {"start": 40_000, "after_warmup": 50_000, "end": 51_000, "samples": []},
    }


def _results() -> dict[str, Any]:
    redis_figures = {
        "calls_per_admission": 0.15,
        "round_trips_per_admission": 0.12,
        "scripts_per_admission": 0.1,
        "executed_per_admission": 4.1,
    }
    gateway = _config(24_000.0, 0.45, redis=redis_figures)
    gateway["exactness"] = {
        "exact": True,
        "checks": {"debited_equals_events_x_price": True},
        "price_micros": 1000,
        "usage_events": 10,
        "debited_micros": 10_000,
        "wrk_admitted": 9,
        "in_flight_bound": 1,
        "probe_calls": 1,
        "probe_admitted": 1,
    }
    sweep_points = [
        {"configuration": "gateway", "accounts": a, "distribution": d, "connections": c, "rps": r,
         "p99_ms": 5.0}
        for a, d, c, r in [
            (1, "uniform", 64, 24_000.0), (1, "uniform", 256, 22_000.0),
            (1, "uniform", 1024, 18_000.0), (1_000_000, "uniform", 64, 20_000.0),
            (1_000_000, "zipf", 64, 23_000.0),
        ]
    ]  # fmt: skip
    sweep_points[3].update(  # the 1M block's pairs of runs: its keys, then one key
        paired_rps=21_000.0, reference_rps=25_000.0, reference_ratios=[0.8, 0.9, 0.85]
    )
    gateway["samples"] = {"c64": [{"rps": r} for r in (24_000.0, 20_000.0, 27_000.0)]}
    aiohttp = _config(8_000.0, 0.5)
    aiohttp["samples"] = {"c64": [{"rps": r} for r in (8_000.0, 10_000.0, 7_500.0)]}
    return {
        "configurations": {
            "upstream": _config(110_000.0, 0.2, None),
            "nginx": _config(50_000.0, 0.3),
            "aiohttp": aiohttp,
            "gateway": gateway,
            "gateway-2w": {"status": "failed", "error": "gateway-2w exited with 1\nTraceback"},
        },
        "sweep": {
            "concurrency": [
                {
                    "configuration": "nginx",
                    "accounts": 1,
                    "connections": 64,
                    "rps": 50_000.0,
                    "p99_ms": 3.0,
                }
            ],
            "gateway": sweep_points,
            "exactness": [
                {
                    "accounts": 1_000_000,
                    "rss_kb_cold": 50 * 1024,
                    "rss_kb_start": 600 * 1024,
                    "rss_kb_end": 601 * 1024,
                    "first_sight_rps": 7_000.0,
                    "fill_s": 140,
                    "keys_seen": 1_000_000,
                    "key_cache": {"hit": 999_000.0, "miss": 1_000.0, "negative_hit": 0.0},
                    "exact": True,
                }
            ],
        },
        "date": "2026-01-01 00:00:00 UTC",
        "machine": {"cores": 2, "cpu": "x", "memory_gib": 24, "kernel": "6"},
        "versions": dict.fromkeys(
            ("python", "aiohttp", "uvloop", "wrk", "nginx", "redis_server"), "1"
        ),
        "git": {"commit": "abc", "dirty": False},
        "command": "python -m loadtests.bench",
        "quick": False,
        "duration_s": 900.0,
    }


def test_headline_ratios_and_targets() -> None:
    h = figures.headline(_results())
    assert h["gateway_vs_aiohttp"] == pytest.approx(3.0)
    assert h["gateway_vs_aiohttp_rounds"] == pytest.approx([3.0, 2.0, 3.6])  # round by round
    assert h["gateway_vs_nginx"] == pytest.approx(0.48)
    assert h["gateway_2w_vs_aiohttp"] is None  # it failed
    assert h["added_p99_ms_c1"] == pytest.approx(0.25)
    assert h["added_p99_ms_c1_one_core"] == pytest.approx(0.125)
    assert h["added_p99_ms_c1_nginx"] == pytest.approx(0.1)
    assert h["added_p50_ms_c1_one_core_aiohttp"] == pytest.approx(0.0)
    assert h["redis_calls_per_admission"] == 0.15
    assert h["redis_round_trips_per_admission"] == 0.12
    assert h["sweep_c256_vs_c64"] == pytest.approx(22 / 24)
    assert h["sweep_c1024_vs_c64"] == pytest.approx(0.75)
    assert h["sweep_1m_uniform_vs_1"] == pytest.approx(21 / 25)  # its pairs' medians
    assert h["sweep_1m_uniform_vs_1_pairs"] == pytest.approx([0.8, 0.9, 0.85])
    assert h["sweep_1m_zipf_vs_1"] == pytest.approx(23 / 24)  # none: the one-account block
    assert h["gateway_rss_growth_after_warmup"] == pytest.approx(0.02)
    assert h["exact"] is True
    met = {t["target"]: t["met"] for t in h["targets"]}
    assert met["gateway / aiohttp throughput (goal)"] is True
    assert met["throughput at c1024 / c64"] is False
    assert met["p99 added at 1 connection, one core (ms)"] is True
    assert met["p99 added at 1 connection, across cores (ms)"] is True
    assert met["1M accounts (uniform) / 1 account at c64"] is False


def test_markdown_has_the_ratio_table_and_reports_failures() -> None:
    results = _results()
    results["headline"] = figures.headline(results)
    text = report.markdown(results)
    assert "| gateway / plain aiohttp proxy | 3.00x (rounds 2.00-3.60x) |" in text
    assert "| gateway / nginx | 0.48x |" in text
    assert "| gateway-2w | failed: gateway-2w exited with 1 |" in text
    assert "| 1,000,000 | zipf |" in text
    assert (
        "Before the runs with 1,000,000 accounts, wrk sent the keys in turn for 140 s, until "
        "the gateway had cached 1,000,000 of them (RSS 50.0 -> 600.0 MiB); its first run, "
        "every call a key the gateway had not seen: 7,000 req/s at c64. During the runs, "
        "99.90% of calls found their key cached."
    ) in text
    assert (
        "in turn first; medians, and the ratio pair by pair: 1,000,000 accounts uniform: "
        "21,000 against 25,000 req/s, 0.840 (pairs 0.800-0.900)."
    ) in text
    assert "on one core (wrk, proxy, upstream and Redis pinned" in text
    assert "; 1, persistence: none. Commit" in text
    assert "gateway **0.125 / 0.000 ms**, nginx 0.050 / 0.000 ms" in text


def test_readme_section_is_replaced_between_the_markers(tmp_path: Path) -> None:
    results = _results()
    results["headline"] = figures.headline(results)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Load\n\nbefore\n{report.README_START}\nold\n{report.README_END}\nafter\n")
    assert report.update_readme(results, readme)
    text = readme.read_text()
    assert "old" not in text and text.startswith("# Load\n\nbefore\n") and text.endswith("after\n")
    assert "| gateway / plain aiohttp proxy | 3.00x (rounds 2.00-3.60x) |" in text
    assert "#### Ratios" in text
    readme.write_text("no markers\n")
    assert not report.update_readme(results, readme)


def _save(folder: Path, name: str, results: dict[str, Any]) -> None:
    (folder / f"{name}.json").write_bytes(orjson.dumps(results))


def test_runs_side_by_side_show_each_run_as_it_recorded_it(tmp_path: Path) -> None:
    older = _results()  # recorded no headline: its figures are worked out from its measurements
    newer = _results()
    newer["configurations"]["gateway"]["c64"]["rps"] = 16_000.0  # 2.0x aiohttp, not 3.0x
    # A figure the code of its day took otherwise (computed from these points: 0.84).
    newer["headline"] = {**figures.headline(newer), "sweep_1m_uniform_vs_1": 0.95}
    newer["git"] = {"commit": "def4567890", "dirty": True}
    _save(tmp_path, "20261206-120000", newer)
    _save(tmp_path, "20261205-120000", older)
    _save(tmp_path, "20261206-130000", {**_results(), "quick": True})
    _save(
        tmp_path,
        "20261206-140000",
        {**_results(), "command": "python -m loadtests.bench --only gateway"},
    )
    _save(tmp_path, "latest", newer)
    found = runs.full_runs(tmp_path)
    assert [stamp for stamp, _ in found] == ["20261206-120000", "20261205-120000"]
    assert [stamp for stamp, _ in runs.full_runs(tmp_path, since="20261206")] == ["20261206-120000"]
    text = "\n".join(runs.markdown(found))
    assert text.startswith("2 full runs, 2026-12-05 12:00 to 2026-12-06 12:00 ")
    assert "| gateway / aiohttp throughput (goal) | >= 3.0 | 2.000 | 3.000 | 1 of 2 | - |" in text
    assert "| gateway / aiohttp throughput (floor) | >= 2.0 | 2.000 | 3.000 | 2 of 2 | - |" in text
    assert (
        "| 1M accounts (uniform) / 1 account at c64 | >= 0.9 | 0.840 | 0.950 | 1 of 2 | - |" in text
    )
    # The latency targets beside the plain aiohttp proxy's figure against the same limit.
    assert (
        "| p99 added at 1 connection, one core (ms) | <= 0.3 | 0.125 | 0.125 | 2 of 2 "
        "| 0.150 - 0.150, 2 of 2 |"
    ) in text
    assert (
        "| 2026-12-06 12:00 | `def4567+` | 2.00x | 0.32x | 50.0 / 50.0 | 0.125 / 0.150 "
        "| 0.250 / 0.300 | 0.917 | 0.750 | 0.950 / 0.958 | yes |"
    ) in text
    assert "| 2026-12-05 12:00 | `abc` | 3.00x | 0.48x |" in text
    assert runs.markdown([]) == ["No full run in the results yet."]


def test_the_runs_go_between_their_own_readme_markers(tmp_path: Path) -> None:
    _save(tmp_path, "20261206-120000", _results())
    readme = tmp_path / "README.md"
    latest = f"{report.README_START}\nlatest\n{report.README_END}\n"
    readme.write_text(f"# Load\n{latest}{runs.README_START}\nold\n{runs.README_END}\nafter\n")
    lines = runs.markdown(runs.full_runs(tmp_path))
    assert report.replace_section(readme, runs.README_START, runs.README_END, lines)
    once = readme.read_text()
    assert report.replace_section(readme, runs.README_START, runs.README_END, lines)
    assert readme.read_text() == once  # rebuilt, not appended
    assert "old" not in once and latest in once and once.endswith(f"{runs.README_END}\nafter\n")
    assert "1 full run, 2026-12-06 12:00 to 2026-12-06 12:00" in once


def test_write_saves_latest_and_timestamped_files(tmp_path: Path) -> None:
    results = _results()
    for key in ("date", "machine", "versions", "git", "command", "quick"):
        results.pop(key)
    args = argparse.Namespace(
        quick=True, skip_sweep=False, skip_gateway=False, only="", redis_aof=True
    )
    written = report.write(results, args, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [p.name for p in written][:2] == ["latest.json", "latest.md"]
    assert len([n for n in names if n.endswith(".json")]) == 2  # latest + timestamped
    saved = orjson.loads((tmp_path / "latest.json").read_bytes())
    assert saved["gateway_vs_aiohttp"] == pytest.approx(3.0)
    assert saved["gateway_vs_nginx"] == pytest.approx(0.48)
    assert saved["added_p99_ms_c1"] == pytest.approx(0.25)
    assert saved["redis_calls_per_admission"] == 0.15
    assert saved["machine"]["cores"] and "commit" in saved["git"]
    assert saved["command"] == "python -m loadtests.bench --quick --redis-aof"


def test_exit_code_flags_failures_errors_and_inexact_metering() -> None:
    args = argparse.Namespace()
    ok = {"status": "ok", "errors": {"requests": 100, "non_2xx": 0, "socket": 0}}
    assert bench.exit_code({"configurations": {"nginx": ok}}, args) == 0
    failing = {"status": "failed", "error": "gateway did not answer\nlog tail"}
    assert bench.exit_code({"configurations": {"gateway": failing}}, args) == 1
    refused = {**ok, "errors": {"requests": 100, "non_2xx": 100, "socket": 0}}
    assert bench.exit_code({"configurations": {"gateway": refused}}, args) == 1
    inexact = {**ok, "exactness": {"exact": False, "checks": {"probe_debit_exact": False}}}
    assert bench.exit_code({"configurations": {"gateway": inexact}}, args) == 1
    swept = {"configurations": {}, "sweep": {"exactness": [{"accounts": 1000, "exact": False}]}}
    assert bench.exit_code(swept, args) == 1
    assert bench.exit_code({"configurations": {}, "aborted": "Traceback\nKeyError: x\n"}, args) == 1


def test_machine_busy_time_counts_process_time_only() -> None:
    text = "cpu  1000 50 400 9000 30 20 600 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
    busy, total = procstat.parse_system_busy(text)
    ticks = procstat.CLOCK_TICKS
    assert busy == pytest.approx(1450 / ticks)  # user + nice + system; not irq, softirq, steal
    assert total == pytest.approx(11110 / ticks)
    with pytest.raises(ValueError):
        procstat.parse_system_busy("intr 1 2 3\n")


def test_sweep_rounds_turn_back_and_forth_so_c1_never_follows_the_highest() -> None:
    warmup = [1, 16, 64, 256, 1024]
    order = harness.sweep_order(warmup, 3)
    assert order == [1024, 256, 64, 16, 1, 1, 16, 64, 256, 1024, 1024, 256, 64, 16, 1]
    runs = warmup + order
    assert all(not (a == 1024 and b < 64) for a, b in itertools.pairwise(runs))
    assert Counter(order) == dict.fromkeys(warmup, 3)


def test_reference_pairs_take_turns_at_running_first() -> None:
    assert harness.pair_order(7) == [True, False, True, False, True, False, True]
    assert harness.pair_order(1) == [True]


def test_variants_and_selection() -> None:
    args = bench.parse_args(["--variant", "gateway-bp:METER_UPSTREAM_POOL_SIZE=9,METER_X=1"])
    assert args.variants["gateway-bp"] == {"METER_UPSTREAM_POOL_SIZE": "9", "METER_X": "1"}
    assert bench.selected(args)[-2:] == ["gateway-2w", "gateway-bp"]
    quick = bench.parse_args(["--quick", "--variant", "gateway-bp:METER_X=1"])
    assert bench.selected(quick)[-1] == "gateway-bp"
    assert bench.selected(bench.parse_args(["--quick", "--only", "gateway"])) == ["gateway"]
    assert bench.selected(bench.parse_args(["--skip-gateway"])) == [
        "upstream", "nginx", "nginx-2w", "aiohttp"
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        bench.parse_args(["--variant", "nginx:X=1"])
    with pytest.raises(SystemExit):
        bench.selected(bench.parse_args(["--only", "haproxy"]))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], ("no", "")), (["--redis-aof"], ("yes", "everysec", ""))],
)
def test_the_bench_redis_keeps_nothing_or_the_recommended_aof(
    argv: list[str], expected: tuple[str, ...], tmp_path: Path
) -> None:
    args = bench.parse_args(["--quick", "--skip-sweep", *argv])
    b = harness.Bench(args, harness.QUICK, tmp_path)
    try:
        names = ("appendonly", "appendfsync", "save") if args.redis_aof else ("appendonly", "save")
        got = tuple(b.client.config_get(name)[name] for name in names)
        assert got == expected
    finally:
        b.close()


def test_a_variant_can_run_the_gateway_of_another_checkout(redis_url: str, tmp_path: Path) -> None:
    args = bench.parse_args(["--variant", f"gateway-old:SOURCE={tmp_path / 'old'}"])
    assert args.variants["gateway-old"] == {harness.SOURCE: str(tmp_path / "old")}
    for package in ("meter", "gateway", "ledger", "admin"):
        shutil.copytree(ROOT / package, tmp_path / "old" / package)
    http11 = tmp_path / "old" / "gateway" / "http11.py"
    http11.write_text(http11.read_text().replace('SERVER = b"meter"', 'SERVER = b"meter-old"'))
    upstream = servers.start_upstream(tmp_path)
    env = harness.gateway_environment(redis_url, upstream.url, {})
    try:
        for source, expected in ((None, "meter"), (tmp_path / "old", "meter-old")):
            gateway = servers.start_gateway(tmp_path, env, 1, "gateway-old", source)
            try:
                with urllib.request.urlopen(gateway.url + "/_meter/healthz", timeout=5) as resp:
                    assert resp.headers["Server"] == expected
            finally:
                gateway.stop()
    finally:
        upstream.stop()


def test_key_lookup_bench_resolves_and_admits_every_key_and_reports_what_a_miss_costs(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--keys", "256", "--concurrency", "8", "--rounds", "1", "--redis-url", redis_url]
    assert key_lookup_bench.main(argv) == 0
    table = capsys.readouterr().out
    assert "256 keys, concurrency 8, median of 1 rounds" in table
    rows = {
        cells[0]: cells[1:]
        for line in table.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    # (the bench itself exits non-zero unless every key resolved and every call was admitted)
    for mode in key_lookup_bench.MODES:
        assert float(rows[mode][0]) > 0 and float(rows[mode][1]) > 0  # client and Redis CPU
    for mode in key_lookup_bench.MODES[:2]:
        assert f"{mode}: more than a hit" in rows


def test_sse_bench_measures_each_call_and_finds_the_metering_exact(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The SSE route's every settlement read its units, and the money adds up (else 1)."""
    argv = ["--events", "3", "--gap-ms", "1", "--connections", "4", "--rounds", "1"]
    assert sse_bench.main([*argv, "--seconds", "1", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "stream" in line]
    assert len(rows) == 3 and "reading a stream's usage in process" in out


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 0.5, None), ([3.0], 0.99, 3.0), ([4.0, 1.0, 3.0, 2.0], 0.5, 2.0),
     ([float(v) for v in range(1, 101)], 0.99, 99.0), ([1.0, 2.0], 1.0, 2.0)],
)  # fmt: skip
def test_recharge_percentile_is_the_nearest_rank(
    values: list[float], q: float, expected: float | None
) -> None:
    assert recharge_report.percentile(values, q) == expected


def test_recharge_histogram_bound_is_the_first_bucket_holding_the_quantile() -> None:
    buckets = {"0.1": 0.0, "0.25": 60.0, "0.5": 99.0, "1.0": 100.0, "+Inf": 100.0}
    assert recharge_report.histogram_bound(buckets, 0.5) == 0.25
    assert recharge_report.histogram_bound(buckets, 0.99) == 0.5
    assert recharge_report.histogram_bound({"+Inf": 0.0}, 0.5) is None


def test_recharge_cpu_pairs_compare_on_with_off_of_the_same_pair() -> None:
    def phase(pair: int, on: bool, us: float) -> dict[str, Any]:
        return {"pair": pair, "auto_recharge": on, "cpu_us_per_call": {"gateway": us}}

    cpu = recharge_report.cpu_pairs(
        [phase(0, True, 60.0), phase(0, False, 50.0), phase(1, True, 40.0), phase(1, False, 40.0)]
    )
    assert [p["ratio"] for p in cpu["pairs"]] == [1.2, 1.0]
    assert cpu["on_median_us"] == 50.0 and cpu["off_median_us"] == 45.0
    assert cpu["median_of_pair_ratios"] == pytest.approx(1.1)


def test_recharge_bench_recharges_every_crossing_once_and_reports_both_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One short pair on the whole stack: exits 0 only when every check held."""
    argv = ["--accounts", "2", "--pairs", "1", "--seconds", "1", "--warmup", "1"]
    argv += ["--period", "0.3", "--connections", "8", "--results-dir", str(tmp_path)]
    argv += ["--noise-retries", "0", "--quiet-wait", "0"]  # others' work slows it, no more
    assert recharge_bench.main(argv) == 0
    result = orjson.loads((tmp_path / "recharge-latest.json").read_bytes())
    assert result["crossing_to_credit"]["count"] > 0 and result["checks"]["ok"]
    assert [p["auto_recharge"] for p in result["phases"]] == [True, False]
    assert (tmp_path / "recharge-latest.md").read_text() in capsys.readouterr().out


def test_admin_bench_requests_are_the_same_for_both_apis_and_credits_never_repeat() -> None:
    accounts = ["acct_a", "acct_b"]
    for kind in admin_mix.CLASSES:
        assert admin_mix.request(kind, 3, accounts, "t") == admin_mix.request(
            kind, 3, accounts, "t"
        )
    credits = [admin_mix.request("post_credit", i, accounts, "t").body for i in range(50)]
    keys = {orjson.loads(body or b"")["idempotency_key"] for body in credits}
    assert len(keys) == 50
    assert admin_mix.request("get_account", 3, accounts, "t").path == "/v1/accounts/acct_b"
    assert admin_mix.chunks(20, 6) == [4, 4, 3, 3, 3, 3]


def test_admin_bench_latency_histogram_is_within_one_percent() -> None:
    latencies = [i / 10_000 for i in range(1, 1001)]  # 0.1 .. 100 ms
    buckets = admin_report.histogram(latencies)
    for fraction in (0.5, 0.99):
        exact = admin_mix.percentile(latencies, fraction)
        assert exact is not None
        assert admin_report.histogram_percentile(buckets, fraction) == pytest.approx(
            exact * 1e3, rel=0.01
        )
    assert admin_report.histogram_percentile({}, 0.5) is None


def test_admin_bench_measures_every_class_of_two_checkouts_and_each_answer_is_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny A/B: this checkout against a copy of it, run from the copy's own code."""
    old = tmp_path / "old"
    for package in ("meter", "gateway", "ledger", "admin", "portal"):
        shutil.copytree(ROOT / package, old / package, ignore=shutil.ignore_patterns("__pycache__"))
    results_dir = tmp_path / "results"
    argv = ["--requests", "300", "--rounds", "1", "--warmup", "5", "--accounts", "2"]
    argv += ["--compare", str(old), "--results-dir", str(results_dir)]
    argv += ["--noise-retries", "0"]  # other work on the machine slows this test, no more
    assert admin_bench.main(argv) == 0
    results = orjson.loads((results_dir / "admin-bench-latest.json").read_bytes())
    assert results["checkouts"]["old"]["path"] == str(old.resolve())
    (measured,) = results["rounds"]
    for kind, status in admin_mix.EXPECTED.items():
        for name in ("old", "new"):
            phase = measured["classes"][kind][name]
            assert phase["cpu_us"] > 0, (kind, name)
            assert phase["statuses"] == {str(status): 50}, (kind, name, phase["surprises"])
    for kind in (*admin_mix.CLASSES, admin_report.OVERALL):
        assert results["ratios"][kind]["cpu_us"] > 0
    table = (results_dir / "admin-bench-latest.md").read_text()
    assert table in capsys.readouterr().out and "| **overall** |" in table


# -- stopping -------------------------------------------------------------------------


def _comm(pid: int) -> str:
    try:
        return (procstat.PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def _wait_for(condition: Any, proc: subprocess.Popen[bytes], what: str, limit_s: float) -> None:
    """Poll ``condition`` (a process table: nothing to await) while ``proc`` runs."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert proc.poll() is None, f"exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} within {limit_s:.0f} s"
        time.sleep(0.05)


def test_a_bench_stopped_with_sigterm_stops_every_process_it_started(tmp_path: Path) -> None:
    log = tmp_path / "bench.log"
    argv = ["--quick", "--only", "upstream", "--skip-sweep", "--quiet-budget", "0"]
    argv += ["--noise-retries", "0", "--results-dir", str(tmp_path / "results")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.bench", *argv], cwd=ROOT, stdout=out, stderr=out
        )
    try:
        # Stopped while it measures: Redis, the upstream and wrk run under it.
        _wait_for(
            lambda: "wrk" in {_comm(p) for p in procstat.tree(proc.pid)}, proc, "wrk run", 120
        )
        started = [p for p in procstat.tree(proc.pid) if p != proc.pid]
        assert {"redis-server", "wrk"} <= {_comm(p) for p in started}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [(p, _comm(p)) for p in started if procstat.alive(p)]
    for pid, _ in left:  # not to leave them running when this fails
        os.kill(pid, signal.SIGKILL)
    assert left == []
    assert "interrupted: stopping what was started" in log.read_text()
    assert not (tmp_path / "results").exists()  # an interrupted run reports nothing


def test_end_descendants_stops_children_that_ignore_sigterm() -> None:
    # In a process of its own: here it would stop the test session's servers.
    script = """
import subprocess, sys
from loadtests import procstat
stubborn = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(1, flush=True); time.sleep(60)"
)
kids = [
    subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE) for _ in range(2)
]
kids.append(subprocess.Popen(["sleep", "60"]))
for kid in kids[:2]:
    kid.stdout.readline()  # SIGTERM is ignored from here on
stopped = procstat.end_descendants(grace_s=0.5)
print(sorted(stopped) == sorted(k.pid for k in kids), [procstat.alive(k.pid) for k in kids])
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True [False, False, False]"  # SIGKILL ended the stubborn two
