"""What settling from an event stream costs the gateway: CPU per call, side by side.

    .venv/bin/python -m loadtests.sse_bench [--quick] [--events 20] [--gap-ms 2]

One gateway process (1 worker), one echo upstream, one Redis, and wrk at
``--connections``. Four calls, measured interleaved in ``--rounds`` rounds
(each round runs every call once, in a rotating order) and reported as medians:

* ``fixed, small``: ``GET /v1/bench``, a small JSON answer at a fixed price (the
  main benchmark's call);
* ``fixed, stream``: an OpenAI-style event stream (``--events`` content chunks,
  the usage chunk, ``[DONE]``; one HTTP chunk each, ``--gap-ms`` apart, as an LLM
  streams) through a fixed-price route: the relay of the chunks alone;
* ``header units, stream``: the same stream through a variable-cost route settled
  from a header at the head (``unit_price``): relay + the settle call;
* ``sse units, stream``: the same stream through a route settled from its last
  SSE event (two kinds: ``json:usage.prompt_tokens``, ``json:usage.completion_tokens``):
  relay + reading every chunk + the settle call after the end.

``sse`` minus ``header`` is what reading the stream for its usage costs a call
(and, divided by the events, a chunk). CPU is the gateway's user + system time
(``/proc``) over the calls wrk completed; a run during which other processes
used more than ``--noise-threshold`` cores is run again (up to 3 times). As
that difference is small beside the relay's own cost, it is also measured
without the network: ``UsageMeter`` fed the stream's chunks in this process,
``time.process_time`` over many streams. At the end the metering is checked:
every settlement of the SSE route read both units (no units missing but the
streams wrk cut when it stopped), and the money the account lost equals what
the gateway says it charged, to the micro.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis as redis_sync

from gateway.pricing import parse_prices
from gateway.usage_meter import UsageMeter
from meter import local_servers, open_files, program_paths
from meter.echo_upstream import CONTENT_EVENT, DONE_EVENT, usage_event

from . import keyspace, measure, redis_side, servers, stats, wrk
from .harness import SHARDS, gateway_environment, log

FIXED_PRICE, SSE_MAX, HEADER_UNIT, INPUT_PRICE, OUTPUT_PRICE = 1_000, 1_000_000, 1, 1, 2
PRICES = f"""
[default]
price = {FIXED_PRICE}

[[routes]]
name = "stream"
match = "GET /v1/stream"
price = {FIXED_PRICE}

[[routes]]
name = "header"
match = "GET /v1/header"
max_price = {SSE_MAX}
unit_price = {HEADER_UNIT}

[[routes]]
name = "sse"
match = "GET /v1/sse"
max_price = {SSE_MAX}
units = [
  {{ kind = "input", price = {INPUT_PRICE}, from = "json:usage.prompt_tokens" }},
  {{ kind = "output", price = {OUTPUT_PRICE}, from = "json:usage.completion_tokens" }},
]
"""
CALLS = ("fixed, small", "fixed, stream", "header units, stream", "sse units, stream")


def paths(events: int, gap_ms: float) -> dict[str, str]:
    stream = f"sse={events}&gap_ms={gap_ms:g}"
    return {
        "fixed, small": "/v1/bench",
        "fixed, stream": f"/v1/stream?{stream}",
        "header units, stream": f"/v1/header?{stream}&units={3 * events}",
        "sse units, stream": f"/v1/sse?{stream}",
    }


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gateway's counters from its metrics ``url``: (name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(meter_gateway_\w+_total)\{(.*)\} (\S+)", line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2))))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def check(
    metrics_url: str, redis_url: str, account: keyspace.BenchAccount, events: int
) -> list[str]:
    """What is wrong with the metering of the whole run (nothing: [])."""
    counters = scrape(metrics_url)

    def total(name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, ls), v in counters.items() if n == name and want <= set(ls))

    problems = []
    missing = total("meter_gateway_units_missing_total", route="sse")
    cut = total("meter_gateway_units_missing_total", route="sse", reason="cut")
    if missing != cut:
        problems.append(f"{missing - cut:.0f} SSE calls had units missing (not cut by wrk)")
    settled = total("meter_gateway_settlements_total", route="sse", source="sse")
    expected = settled * events * (INPUT_PRICE + OUTPUT_PRICE) + cut * SSE_MAX
    charged_sse = total("meter_gateway_charged_micros_total", route="sse")
    if charged_sse != expected:
        problems.append(f"SSE route charged {charged_sse:.0f}, its settlements say {expected:.0f}")
    charged = total("meter_gateway_charged_micros_total")
    lost = redis_side.BALANCE - redis_side.total_balance(redis_url, [account])
    if lost != charged:
        problems.append(f"the account lost {lost} micros, the gateway charged {charged:.0f}")
    return problems


def reading_cost_us(events: int, streams: int = 2_000, rounds: int = 7) -> float:
    """CPU us to read one stream's units in process: a ``UsageMeter`` fed each event as
    one chunk, then ``end``; the median of ``rounds``."""
    units = parse_prices(PRICES).routes[-1].units
    head = [(b"Content-Type", b"text/event-stream")]
    chunks = [CONTENT_EVENT] * events + [usage_event(events), DONE_EVENT]
    took = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(streams):
            meter = UsageMeter(units, head)
            for chunk in chunks:
                meter.feed(chunk)
            readings = meter.end([])
        took.append((time.process_time() - started) / streams * 1e6)
        if readings != [events, events]:
            raise SystemExit(f"sse_bench: the meter read {readings}")
    return float(stats.median(took) or 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.sse_bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="3 rounds of 2 s")
    ap.add_argument("--events", type=int, default=20, help="content chunks per stream")
    ap.add_argument("--gap-ms", type=float, default=2.0, help="between the stream's chunks")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of each call first")
    ap.add_argument("--noise-threshold", type=float, default=0.35, metavar="CORES")
    ap.add_argument("--json", type=Path, help="also write the samples here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 3, 2.0
    if program_paths.find_wrk() is None:
        raise SystemExit("sse_bench: wrk is not installed (make bench installs it)")
    open_files.raise_limit(65536)
    with tempfile.TemporaryDirectory(prefix="meter-sse-bench-") as tmp:
        folder = Path(tmp)
        redis = local_servers.start_redis(folder / "redis")
        started: list[servers.Server] = []
        client = redis_sync.Redis.from_url(redis.url)
        try:
            [account] = keyspace.accounts(1, SHARDS)
            redis_side.provision(redis.url, [account])
            keys = keyspace.write_keys_file(folder / "keys.txt", [account.key])
            prices = folder / "prices.toml"
            prices.write_text(PRICES)
            upstream = servers.start_upstream(folder)
            started.append(upstream)
            env = gateway_environment(redis.url, upstream.url, {"METER_PRICES": str(prices)})
            gateway = servers.start_gateway(folder, env, 1, "gateway")
            started.append(gateway)
            probe = measure.Probe({"proxy": gateway.pid, "upstream": upstream.pid})
            load = wrk.Load(keys)
            urls = {k: gateway.url + p for k, p in paths(args.events, args.gap_ms).items()}
            log(f"sse_bench: {args.events} events {args.gap_ms:g} ms apart, c{args.connections}")
            for name in CALLS:  # warm-up
                measure.run_once(urls[name], args.connections, args.warmup, load, probe, None)
            samples: dict[str, list[dict[str, Any]]] = {name: [] for name in CALLS}
            for r in range(args.rounds):
                order = CALLS[r % len(CALLS) :] + CALLS[: r % len(CALLS)]
                for name in order:
                    for _ in range(4):  # again while other work shares the CPU
                        sample = measure.run_once(
                            urls[name], args.connections, args.seconds, load, probe, client
                        )
                        if sample["foreign_cores"] <= args.noise_threshold:
                            break
                        log(f"  {name}: {sample['foreign_cores']:.2f} cores busy elsewhere")
                    if sample["non_2xx"] or sample["socket_errors"]:
                        raise SystemExit(f"sse_bench: {name}: errors: {sample}")
                    samples[name].append(sample)
                    cpu = sample["cpu_us_per_call"]["proxy"]
                    log(f"  round {r + 1} {name}: {cpu:.1f} us/call, {sample['ok_rps']:.0f}/s")
            time.sleep(0.5)  # the streams wrk cut at its last stop are settled by now
            problems = check(gateway.extra["metrics"], redis.url, account, args.events)
        finally:
            for server in reversed(started):
                server.stop()
            client.close()
            redis.stop()
    report(samples, args, reading_cost_us(args.events))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "samples": samples}))
    for p in problems:
        log(f"sse_bench: {p}")
    return 1 if problems else 0


def report(
    samples: dict[str, list[dict[str, Any]]], args: argparse.Namespace, reading_us: float
) -> None:
    def med(name: str, *key: str) -> float | None:
        values = []
        for s in samples[name]:
            v: Any = s
            for k in key:
                v = v[k]
            values.append(v)
        return stats.median(values)

    chunks = args.events + 3  # content chunks, the usage chunk, [DONE], the last chunk
    print(
        f"\n{args.events} content events a stream, {args.gap_ms:g} ms apart, "
        f"{args.connections} connections, median of {args.rounds} rounds of {args.seconds:g} s\n\n"
        "| call | calls/s | gateway CPU us per call | per HTTP chunk | p50 ms | p99 ms |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    cpu = {name: med(name, "cpu_us_per_call", "proxy") for name in CALLS}
    for name in CALLS:
        per_chunk = None if cpu[name] is None or "small" in name else cpu[name] / chunks
        print(
            f"| {name} | {stats.shown(med(name, 'ok_rps'))} | {stats.shown(cpu[name], 1)} "
            f"| {stats.shown(per_chunk, 2)} | {stats.shown(med(name, 'p50_ms'), 1)} "
            f"| {stats.shown(med(name, 'p99_ms'), 1)} |"
        )

    def paired(a: str, b: str) -> float:
        """The median over rounds of a - b in the same round (steadier than a - b of medians:
        the machine's speed moves between rounds, less within one)."""
        diffs = [
            x["cpu_us_per_call"]["proxy"] - y["cpu_us_per_call"]["proxy"]
            for x, y in zip(samples[a], samples[b], strict=True)
        ]
        return float(stats.median(diffs) or 0.0)

    reading, settling = paired(CALLS[3], CALLS[2]), paired(CALLS[2], CALLS[1])
    print(
        f"\nper round, median: reading the stream for its usage (sse - header units) "
        f"{reading:+.1f} us a call ({reading / chunks:+.2f} us a chunk); settling at all "
        f"(header units - fixed) {settling:+.1f} us a call"
    )
    print(
        f"reading a stream's usage in process (UsageMeter, {args.events + 2} events as "
        f"{args.events + 2} chunks): {reading_us:.1f} us a call, "
        f"{reading_us / (args.events + 2):.2f} us a chunk"
    )


if __name__ == "__main__":
    servers.run_command(main)
