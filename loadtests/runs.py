"""Every full benchmark run kept in ``results/``, side by side: how often each target is met.

    python -m loadtests.runs [--since 20261206] [--folder loadtests/results]

On a VM whose speed moves from hour to hour, one run says little about a
target near its limit; the runs side by side say how often it held and how
far the figures move. Each run shows the figures it recorded; one it did not
record is worked out from its measurements where they hold it, else "-". Only
the timestamped files of full runs count (``latest.json`` is a copy of one of
them; ``--quick`` and partial runs measure less).

After a full run ``report.write`` puts ``markdown`` into ``loadtests/README.md``
between its ``bench:runs`` markers.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from . import figures, stats

RESULTS = Path(__file__).with_name("results")
README_START, README_END = "<!-- bench:runs -->", "<!-- /bench:runs -->"
_STAMP = re.compile(r"(\d{8})-(\d{6})\.json")

Run = tuple[str, dict[str, Any]]  # (stamp "20261206-194628", the run's headline and provenance)


def full_runs(folder: Path = RESULTS, since: str = "") -> list[Run]:
    """The full runs in ``folder`` stamped ``since`` (``YYYYMMDD``) or later, newest first."""
    runs: list[Run] = []
    for path in sorted(folder.glob("*.json"), reverse=True):
        match = _STAMP.fullmatch(path.name)
        if match is None or match[1] < since:
            continue
        results = orjson.loads(path.read_bytes())
        if not is_full(results):
            continue
        runs.append((f"{match[1]}-{match[2]}", summary(results)))
    return runs


def is_full(results: dict[str, Any]) -> bool:
    """The whole plan ran (not ``--quick``): the side-by-side configurations and the sweep.
    (``report.full_run`` decides the same from a run's arguments, before it is written.)"""
    command = str(results.get("command", ""))
    partial = ("--skip-sweep", "--skip-gateway", "--only")
    if results.get("quick") or not results.get("sweep"):
        return False
    return not any(flag in command for flag in partial)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """What one run's line shows: the figures the run recorded in its headline (worked
    out by the code of its day: how a figure is taken has changed, the 1M-accounts
    ratios' among them), those it did not record worked out from its measurements,
    the targets judged on them, and which tree it ran."""
    recorded = {k: v for k, v in (results.get("headline") or {}).items() if v is not None}
    h = {**figures.headline(results), **recorded}
    h["targets"] = figures.targets(h)
    git = results.get("git") or {}
    return {**h, "commit": str(git.get("commit", ""))[:7] + ("+" if git.get("dirty") else "")}


def _pair(a: float | None, b: float | None, digits: int) -> str:
    return f"{stats.shown(a, digits)} / {stats.shown(b, digits)}"


def _stamp(stamp: str) -> str:
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}"


def _met(h: dict[str, Any]) -> str:
    judged = [t["met"] for t in h["targets"] if t["met"] is not None]
    return f"{sum(1 for m in judged if m)} of {len(judged)}"


RUN_COLUMNS = (
    "run (UTC)", "commit", "gateway / aiohttp", "gateway / nginx",
    "CPU us per call: gateway / aiohttp", "p99 added c1, one core: gateway / aiohttp (ms)",
    "p99 added c1, across cores: gateway / aiohttp (ms)", "c256 / c64", "c1024 / c64",
    "1M accounts / 1: uniform / Zipf", "exact", "targets met",
)  # fmt: skip


def run_lines(runs: Sequence[Run]) -> list[str]:
    """A line per run, newest first."""
    out = ["| " + " | ".join(RUN_COLUMNS) + " |", "|---|---|" + "---:|" * (len(RUN_COLUMNS) - 2)]
    for stamp, h in runs:
        cells = [
            _stamp(stamp),
            f"`{h['commit']}`",
            stats.shown(h["gateway_vs_aiohttp"], 2, "x"),
            stats.shown(h["gateway_vs_nginx"], 2, "x"),
            _pair(h["gateway_cpu_us_per_call"], h["aiohttp_cpu_us_per_call"], 1),
            _pair(h.get("added_p99_ms_c1_one_core"), h.get("added_p99_ms_c1_one_core_aiohttp"), 3),
            _pair(h.get("added_p99_ms_c1"), h.get("added_p99_ms_c1_aiohttp"), 3),
            stats.shown(h["sweep_c256_vs_c64"], 3),
            stats.shown(h["sweep_c1024_vs_c64"], 3),
            _pair(h["sweep_1m_uniform_vs_1"], h["sweep_1m_zipf_vs_1"], 3),
            stats.shown(h["exact"]),
            _met(h),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


# The figures a plain proxy has too: the same limit, read off the plain aiohttp proxy.
REFERENCE = {
    "added_p99_ms_c1_one_core": "added_p99_ms_c1_one_core_aiohttp",
    "added_p99_ms_c1": "added_p99_ms_c1_aiohttp",
}


def _over(runs: Sequence[Run], key: str, op: str, limit: float) -> tuple[str, str, str]:
    """Lowest, highest and "met in N of M" of figure ``key`` over the runs that have it."""
    values = [float(h[key]) for _, h in runs if isinstance(h.get(key), int | float)]
    if not values:
        return "-", "-", "-"
    met = sum(1 for v in values if stats.check(v, op, limit))
    return stats.shown(min(values), 3), stats.shown(max(values), 3), f"{met} of {len(values)}"


def target_lines(runs: Sequence[Run]) -> list[str]:
    """Per target: its limit, the lowest and highest figure over the runs, how often met;
    for a latency target, the plain aiohttp proxy's figure against the same limit."""
    out = [
        "| target | limit | lowest | highest | met in "
        "| plain aiohttp proxy: lowest - highest, met in |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    if not runs:
        return out
    for first in runs[0][1]["targets"]:
        key, op, limit = first["figure"], first["op"], first["limit"]
        if key == "exact":
            judged = [h["exact"] for _, h in runs if h["exact"] is not None]
            row = ["-", "-", f"{sum(1 for e in judged if e)} of {len(judged)}"]
        else:
            row = list(_over(runs, key, op, limit))
        reference = "-"
        if key in REFERENCE:
            low, high, met = _over(runs, REFERENCE[key], op, limit)
            reference = f"{low} - {high}, {met}"
        out.append(f"| {first['target']} | {op} {limit} | {' | '.join(row)} | {reference} |")
    return out


def markdown(runs: Sequence[Run]) -> list[str]:
    if not runs:
        return ["No full run in the results yet."]
    span = f"{_stamp(runs[-1][0])} to {_stamp(runs[0][0])}"
    count = f"{len(runs)} full run{'' if len(runs) == 1 else 's'}"
    return [
        f"{count}, {span} (`python -m loadtests.runs`; each run's figures as it recorded "
        'them; "-": a figure the run did not measure yet).',
        "",
        *target_lines(runs),
        "",
        *run_lines(runs),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.runs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--folder", type=Path, default=RESULTS, help="where the results are")
    parser.add_argument("--since", default="", metavar="YYYYMMDD", help="runs of this day or later")
    args = parser.parse_args(argv)
    print("\n".join(markdown(full_runs(args.folder, args.since))))


if __name__ == "__main__":
    main()
