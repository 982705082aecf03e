"""The admin benchmark's arithmetic and report, as pure functions; ``write`` saves it.

A *sample* is one phase: one request class sent to one admin API in one round
(in slices, taking turns with the other API). CPU figures are microseconds per
request of run time (``procstat.run_ns``); utime + stime from ``/proc/<pid>/stat``,
the same count in 10 ms clock ticks, is kept beside it (``cpu_ticks_us``) and the
report compares the two over the whole run.
A sample keeps its latencies as a histogram of 1 % wide buckets, so that the
p50/p99 of all of a round's requests can be had from its samples (to 1 %); a
class's own p50/p99 are read from its latencies exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import admin_mix, stats

NAME = "admin-bench-latest"
OVERALL = "overall"
BUCKET = 1.01  # latency histogram: bucket b holds latencies of about BUCKET**b microseconds
FIGURES = ("cpu_us", "postgres_us", "redis_us", "client_us", "rps", "p50_ms", "p99_ms")


@dataclass
class Tally:
    """One request class sent to one admin API in one round, summed over its slices."""

    slices: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # the admin process (run time, to the nanosecond)
    cpu_ticks_s: float = 0.0  # the same from /proc/<pid>/stat: utime + stime, in clock ticks
    postgres_s: float = 0.0
    redis_s: float = 0.0
    client_s: float = 0.0  # this process: the requests' other end
    foreign_s: float = 0.0  # other programs (another test suite on this machine)
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    surprises: list[str] = field(default_factory=list)  # the first few unexpected answers


def sample(t: Tally, expected: int) -> dict[str, Any]:
    count = len(t.latencies_s)
    p50, p99 = (admin_mix.percentile(t.latencies_s, f) for f in (0.5, 0.99))
    return {
        "requests": count,
        "slices": t.slices,
        "wall_s": t.wall_s,
        "cpu_s": t.cpu_s,
        "cpu_us": stats.per_call_us(t.cpu_s, count),
        "cpu_ticks_s": t.cpu_ticks_s,
        "cpu_ticks_us": stats.per_call_us(t.cpu_ticks_s, count),
        "postgres_us": stats.per_call_us(t.postgres_s, count),
        "redis_us": stats.per_call_us(t.redis_s, count),
        "client_us": stats.per_call_us(t.client_s, count),
        "foreign_cores": max(0.0, t.foreign_s / t.wall_s) if t.wall_s > 0 else None,
        "rps": count / t.wall_s if t.wall_s > 0 else None,
        "p50_ms": None if p50 is None else p50 * 1e3,
        "p99_ms": None if p99 is None else p99 * 1e3,
        "latency_buckets": histogram(t.latencies_s),
        "statuses": {str(code): n for code, n in sorted(t.statuses.items())},
        "unexpected": count - t.statuses.get(expected, 0),
        "surprises": t.surprises[:5],
    }


def histogram(latencies_s: Sequence[float]) -> dict[str, int]:
    """Latencies counted in buckets ``round(log(us) / log(BUCKET))`` (keys as text: JSON)."""
    counts = Counter(round(math.log(max(t * 1e6, 1.0), BUCKET)) for t in latencies_s)
    return {str(b): n for b, n in sorted(counts.items())}


def histogram_percentile(buckets: Mapping[str, int], fraction: float) -> float | None:
    """The nearest-rank percentile of a histogram, in milliseconds (to within 1 %)."""
    total = sum(buckets.values())
    if not total:
        return None
    rank, seen = max(1, math.ceil(total * fraction)), 0
    for b in sorted(buckets, key=int):
        seen += buckets[b]
        if seen >= rank:
            return float(BUCKET ** int(b) / 1e3)
    raise AssertionError("unreachable: the ranks add up to the total")


def overall(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The samples of one admin API in one round taken together."""
    count = sum(s["requests"] for s in samples)
    wall = sum(s["wall_s"] for s in samples)
    out: dict[str, Any] = {
        "requests": count,
        "wall_s": wall,
        "cpu_s": sum(s["cpu_s"] for s in samples),
        "cpu_ticks_s": sum(s["cpu_ticks_s"] for s in samples),
        "rps": count / wall if wall > 0 else None,
        "unexpected": sum(s["unexpected"] for s in samples),
    }
    out["cpu_us"] = stats.per_call_us(out["cpu_s"], count)
    out["cpu_ticks_us"] = stats.per_call_us(out["cpu_ticks_s"], count)
    for f in ("postgres_us", "redis_us", "client_us"):
        out[f] = sum((s[f] or 0) * s["requests"] for s in samples) / count if count else None
    buckets: Counter[str] = Counter()
    for s in samples:
        buckets.update(s["latency_buckets"])
    out["p50_ms"], out["p99_ms"] = (histogram_percentile(buckets, f) for f in (0.5, 0.99))
    return out


def per_round(rounds: Sequence[Mapping[str, Any]], name: str) -> list[dict[str, Any]]:
    """Each round's samples of ``name`` by class, plus ``overall``."""
    out = []
    for r in rounds:
        by_class = {kind: r["classes"][kind][name] for kind in r["classes"]}
        out.append({**by_class, OVERALL: overall(list(by_class.values()))})
    return out


def summarize(rounds: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """name -> class (and ``overall``) -> the median of each figure over the rounds, the
    requests sent and how many got another status than expected."""
    summary: dict[str, Any] = {}
    for name in names:
        mine = per_round(rounds, name)
        summary[name] = {
            kind: {
                **stats.summarize([r[kind] for r in mine], FIGURES),
                "requests": sum(r[kind]["requests"] for r in mine),
                "unexpected": sum(r[kind]["unexpected"] for r in mine),
            }
            for kind in [*admin_mix.CLASSES, OVERALL]
            if mine and kind in mine[0]
        }
    return summary


def ratios(rounds: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> dict[str, Any]:
    """class -> new/old: of the medians, and of each round (the noise)."""
    old, new = per_round(rounds, "old"), per_round(rounds, "new")
    out: dict[str, Any] = {}
    for kind in summary["new"]:
        out[kind] = {
            f: stats.ratio(summary["new"][kind][f], summary["old"][kind][f]) for f in FIGURES
        }
        out[kind]["cpu_us_rounds"] = [
            stats.ratio(n[kind]["cpu_us"], o[kind]["cpu_us"]) for o, n in zip(old, new, strict=True)
        ]
    return out


def round_line(this: Mapping[str, Any]) -> str:
    """One round in a log line: each API's overall CPU per request."""
    parts = []
    for name in this["order"]:
        together = overall([by_name[name] for by_name in this["classes"].values()])
        parts.append(f"{name} {stats.shown(together['cpu_us'], 1)} us/req")
    return ", ".join(parts)


def unexpected(summary: Mapping[str, Any]) -> list[str]:
    return [
        f"{name} {kind}: {s['unexpected']:,} of {s['requests']:,} requests did not get "
        f"{admin_mix.EXPECTED[kind]}"
        for name, by_class in summary.items()
        for kind, s in by_class.items()
        if kind != OVERALL and s["unexpected"]
    ]


def _label(kind: str) -> str:
    return f"{kind} ({admin_mix.EXPECTED[kind]})" if kind in admin_mix.EXPECTED else f"**{kind}**"


def _spread(values: Sequence[float | None]) -> str:
    clean = [v for v in values if v is not None]
    return f"{min(clean):.3f}-{max(clean):.3f}" if clean else "-"


def markdown(results: Mapping[str, Any]) -> str:
    summary, checkouts = results["summary"], results["checkouts"]
    rounds = len(results["rounds"])
    lines = [
        f"# Admin API CPU per request ({results['date']})",
        "",
        f"{results['requests_per_round']:,} requests a round to each admin API (one phase per "
        f"class, by turns of about {results['turn_s']:g} s), concurrency "
        f"{results['concurrency']}, "
        f"medians of {rounds} round(s); "
        f"{results['machine']['cores']} cores, Python {results['versions']['python']}.",
        "",
    ]
    for name, tree in checkouts.items():
        commit = (tree["commit"] or "?")[:10] + ("+" if tree["dirty"] else "")
        lines.append(f"- {name}: `{tree['path']}` at `{commit}`")
    lines.append("")
    if "ratios" in results:
        lines += [
            "| class (status) | old CPU us | new CPU us | new/old | rounds' new/old "
            "| old req/s | new req/s | old p50 / p99 ms | new p50 / p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind, r in results["ratios"].items():
            o, n = summary["old"][kind], summary["new"][kind]
            lines.append(
                f"| {_label(kind)} | {stats.shown(o['cpu_us'], 1)} | {stats.shown(n['cpu_us'], 1)}"
                f" | {stats.shown(r['cpu_us'], 3)} | {_spread(r['cpu_us_rounds'])}"
                f" | {stats.shown(o['rps'])} | {stats.shown(n['rps'])}"
                f" | {stats.shown(o['p50_ms'], 2)} / {stats.shown(o['p99_ms'], 2)}"
                f" | {stats.shown(n['p50_ms'], 2)} / {stats.shown(n['p99_ms'], 2)} |"
            )
        lines.append("")
    lines += [
        "| admin API | class (status) | CPU us | Postgres us | Redis us | client us "
        "| req/s | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_class in summary.items():
        for kind, s in by_class.items():
            lines.append(
                f"| {name} | {_label(kind)} | {stats.shown(s['cpu_us'], 1)}"
                f" | {stats.shown(s['postgres_us'], 1)} | {stats.shown(s['redis_us'], 1)}"
                f" | {stats.shown(s['client_us'], 1)} | {stats.shown(s['rps'])}"
                f" | {stats.shown(s['p50_ms'], 2)} | {stats.shown(s['p99_ms'], 2)} |"
            )
    whole = {name: overall([c[name] for r in results["rounds"] for c in r["classes"].values()])
             for name in checkouts}  # fmt: skip
    lines += [
        "",
        "CPU: the admin process's run time, to the nanosecond (`/proc/<pid>/task/*/schedstat`), "
        "the count `/proc/<pid>/stat` gives as utime + stime in 10 ms ticks; over the whole "
        "run, us a request, run time / utime + stime: "
        + ", ".join(
            f"{name} {stats.shown(w['cpu_us'], 1)} / {stats.shown(w['cpu_ticks_us'], 1)}"
            for name, w in whole.items()
        )
        + ". Overall p50 / p99: of all the round's requests, to 1 %.",
    ]
    noise = results["noise"]
    busiest = max(
        (c["foreign_cores"] or 0.0 for r in results["rounds"] for by in r["classes"].values()
         for c in by.values()),
        default=0.0,
    )  # fmt: skip
    lines.append(
        f"Other programs kept up to {busiest:.2f} cores busy during a phase reported here; "
        f"{len(noise['reruns'])} phase(s) were measured again, over "
        f"{noise['threshold_cores']:.2f} cores (listed in the JSON)."
    )
    return "\n".join(lines) + "\n"


def write(results: Mapping[str, Any], folder: Path) -> tuple[Path, Path]:
    """``admin-bench-latest.json`` and ``.md`` in ``folder``, replacing the last run's."""
    folder.mkdir(parents=True, exist_ok=True)
    as_json, as_md = folder / f"{NAME}.json", folder / f"{NAME}.md"
    as_json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    as_md.write_text(markdown(results))
    return as_json, as_md
