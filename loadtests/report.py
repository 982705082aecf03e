"""Turn a benchmark run into ``results/latest.{json,md,png}`` plus timestamped copies.

``markdown`` renders the tables (ratios, side by side, exactness, targets, the
sweeps) from the results and their headline (``figures.py``); ``write`` saves
everything and, after a full run, puts the main tables into
``loadtests/README.md`` between its ``bench:latest`` markers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import orjson

from . import figures, provenance, runs, stats
from .plot import plot
from .stats import shown

README = Path(__file__).with_name("README.md")
README_START, README_END = "<!-- bench:latest -->", "<!-- /bench:latest -->"


def _accounts(n: int) -> str:
    return f"{n:,} account" + ("" if n == 1 else "s")


def _settings(results: dict[str, Any], name: str) -> str:
    settings = results.get("variants", {}).get(name, {})
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "variant"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


MAIN_COLUMNS = (
    "configuration", "procs", "req/s c64", "p50 c64", "p99 c64", "p50 c1", "p99 c1",
    "p50 c1 one core", "p99 c1 one core",
    "CPU us/call: proxy", "upstream", "redis", "wrk",
    "Redis calls/adm", "round trips/adm", "RSS MiB start / warm / end", "other CPU",
    "errors",
)  # fmt: skip


def _spread(
    ratios: list[float] | None, each: str = "rounds", digits: int = 2, unit: str = "x"
) -> str:
    """`` (rounds 2.54-3.43x)``: the ratio in each round, lowest to highest."""
    if not ratios:
        return ""
    return f" ({each} {min(ratios):.{digits}f}-{max(ratios):.{digits}f}{unit})"


def _main_row(name: str, r: dict[str, Any]) -> str:
    if r.get("status") != "ok":
        error = (r.get("error") or "failed").splitlines()[0][:160]
        return _row(name, f"failed: {error}", *[""] * (len(MAIN_COLUMNS) - 2))
    c64, c1, cpu = r["c64"], r["c1"], r["c64"]["cpu_us_per_call"]
    one = r.get("c1_one_core") or {}
    red, rss = c64.get("redis", {}), r["rss_kb"]
    return _row(
        name, r["processes"], shown(c64["rps"]), shown(c64["p50_ms"], 2), shown(c64["p99_ms"], 2),
        shown(c1["p50_ms"], 3), shown(c1["p99_ms"], 3),
        shown(one.get("p50_ms"), 3), shown(one.get("p99_ms"), 3),
        shown(cpu.get("proxy"), 1), shown(cpu.get("upstream"), 1), shown(cpu.get("redis"), 1),
        shown(cpu.get("wrk"), 1),
        shown(red.get("calls_per_admission"), 3), shown(red.get("round_trips_per_admission"), 3),
        " / ".join(shown(rss[k] / 1024, 1) for k in ("start", "after_warmup", "end")),
        shown(c64.get("foreign_cores"), 2),
        _errors(r.get("errors")),
    )  # fmt: skip


ADDED_LATENCY = (
    ("c1_one_core", "on one core (wrk, proxy, upstream and Redis pinned to one CPU: the hop's "
     "own work, without the VM's cross-core wake-ups)"),
    ("c1", "across cores, as the machine schedules them"),
)  # fmt: skip


def _added_latency(h: dict[str, Any], phase: str, where: str) -> str:
    suffix = figures.ADDED_LATENCY_PHASES[phase]

    def pair(name: str) -> str:
        p99 = h.get(figures.added_latency_key("p99", suffix, name))
        p50 = h.get(figures.added_latency_key("p50", suffix, name))
        return f"{shown(p99, 3)} / {shown(p50, 3)} ms"

    return (
        f"- Latency one hop adds at 1 connection (proxy - upstream), p99 / p50, {where}: "
        f"gateway **{pair('gateway')}**, nginx {pair('nginx')}, aiohttp {pair('aiohttp')}."
    )


def _errors(errors: dict[str, int] | None) -> str:
    if not errors or not (errors["non_2xx"] or errors["socket"]):
        return "0"
    return f"{errors['non_2xx']:,} non-2xx, {errors['socket']:,} socket of {errors['requests']:,}"


def _noise(results: dict[str, Any]) -> tuple[int, float]:
    noise = results.get("noise", {})
    return int(noise.get("reruns", 0)), float(noise.get("waited_for_quiet_s", 0.0))


def _summary_lines(results: dict[str, Any]) -> list[str]:
    """Where and how it ran, the ratios, the side-by-side table."""
    h, m, v, g = results["headline"], results["machine"], results["versions"], results["git"]
    commit = (g["commit"] or "?")[:12] + (" (dirty)" if g["dirty"] else "")
    plan = "quick" if results["quick"] else "full"
    reruns, waited = _noise(results)
    busy = [
        f"**The machine was busy with other work during this run** ({reruns} noisy runs "
        f"re-run, {waited:.0f} s spent waiting for quiet): the figures are approximate; "
        "compare ratios rather than absolute numbers, and see the *other CPU* column.",
        "",
    ]
    return [
        *(busy if reruns or waited > 30 else []),
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB RAM, Linux {m['kernel']}; "
        f"Python {v['python']}, aiohttp {v['aiohttp']}, uvloop {v['uvloop']}; {v['wrk']}; "
        f"{v['nginx']}; {v['redis_server']}, persistence: "
        f"{results.get('redis_persistence', 'none')}. Commit `{commit}`; `{results['command']}` "
        f"({plan} plan, {results['duration_s']:.0f} s). wrk, the proxies, the upstream and "
        "Redis share the machine's cores.",
        "",
        "## Ratios",
        "",
        _row("", "throughput ratio at 64 connections"),
        "|---|---:|",
        _row(
            "gateway / plain aiohttp proxy",
            shown(h["gateway_vs_aiohttp"], 2, "x") + _spread(h.get("gateway_vs_aiohttp_rounds")),
        ),
        _row("gateway / nginx", shown(h["gateway_vs_nginx"], 2, "x")),
        _row("gateway-2w / plain aiohttp proxy", shown(h["gateway_2w_vs_aiohttp"], 2, "x")),
        _row("gateway-2w / nginx-2w", shown(h["gateway_2w_vs_nginx_2w"], 2, "x")),
        _row("plain aiohttp proxy / nginx", shown(h["aiohttp_vs_nginx"], 2, "x")),
        *(
            _row(
                f"{name} ({_settings(results, name)}) / plain aiohttp proxy",
                shown(ratio, 2, "x"),
            )
            for name, ratio in h.get("variants_vs_aiohttp", {}).items()
        ),
        "",
        *(_added_latency(h, phase, where) for phase, where in ADDED_LATENCY),
        "",
        "Redis per admitted call at c64: "
        f"{shown(h['redis_calls_per_admission'], 3)} calls, "
        f"{shown(h['redis_round_trips_per_admission'], 3)} round trips, "
        f"{shown(h['redis_scripts_per_admission'], 3)} script calls, "
        f"{shown(h['redis_commands_executed_per_admission'], 2)} commands executed "
        "(inside scripts too).",
        "",
        "## Side by side (medians)",
        "",
        _row(*MAIN_COLUMNS),
        "|---|" + "---:|" * (len(MAIN_COLUMNS) - 2) + "---|",
        *(_main_row(name, r) for name, r in results.get("configurations", {}).items()),
        "",
        "Latencies in ms. CPU: user + system time of each process tree per completed call "
        "(proxy: all its workers). Redis calls: commands clients sent (script calls included, "
        "commands run inside scripts not); round trips: Redis socket reads. Other CPU: cores "
        "that other programs used during the c64 runs; a run above "
        f"{shown(results.get('noise', {}).get('threshold_cores'), 2)} was run again "
        f"({results.get('noise', {}).get('reruns', 0)} re-runs in all).",
    ]


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Benchmark {results['date']}", ""]
    if results.get("aborted"):
        last = results["aborted"].strip().splitlines()[-1]
        lines += [f"**The run was aborted** (`{last}`); what it measured before is below.", ""]
    lines += _summary_lines(results)
    lines += _exactness_lines(results)
    lines += _targets_lines(results["headline"])
    lines += _sweep_lines(results)
    return "\n".join(lines) + "\n"


def update_readme(results: dict[str, Any], readme: Path = README) -> bool:
    """Put the latest full run's main tables between the README's markers."""
    section = [
        f"### Latest full run ({results['date']})",
        "",
        *_summary_lines(results),
        *_targets_lines(results["headline"]),
        "",
        "Everything else (exactness per gateway process, the sweeps): "
        "[`results/latest.md`](results/latest.md), [`results/latest.png`](results/latest.png).",
    ]
    lines = [
        line.replace("## ", "#### ", 1) if line.startswith("## ") else line for line in section
    ]
    return replace_section(readme, README_START, README_END, lines)


def replace_section(readme: Path, start_marker: str, end_marker: str, lines: list[str]) -> bool:
    """Put ``lines`` between two markers of ``readme``; False when it has not both."""
    text = readme.read_text() if readme.exists() else ""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        return False
    readme.write_text(text[:start] + "\n".join([start_marker, *lines, ""]) + text[end:])
    return True


def _exactness_lines(results: dict[str, Any]) -> list[str]:
    rows = [
        (name, r["exactness"])
        for name, r in results.get("configurations", {}).items()
        if "exactness" in r
    ]
    rows += [
        (f"sweep, {_accounts(e['accounts'])}", e)
        for e in results.get("sweep", {}).get("exactness", [])
    ]
    if not rows:
        return []
    out = [
        "", "## Exactness (each gateway process, start to stop)", "",
        "| run | exact | price | usage events | debited (micros) | wrk saw admitted | probe |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, e in rows:
        if "checks" not in e:
            out.append(f"| {name} | failed: {e.get('error', '')[:100]} | | | | | |")
            continue
        failed = [k for k, ok in e["checks"].items() if not ok]
        out.append(
            _row(
                name,
                "yes" if e["exact"] else "NO: " + ", ".join(failed),
                shown(e["price_micros"]),
                shown(e["usage_events"]),
                shown(e["debited_micros"]),
                f"{shown(e['wrk_admitted'])} (+ up to {shown(e['in_flight_bound'])} in flight)",
                f"{e['probe_admitted']}/{e['probe_calls']}",
            )
        )
    out += [
        "",
        "debited == usage events x price; the probe's K sequential calls add exactly K events "
        "and K x price.",
    ]
    return out


def _reference_lines(points: list[dict[str, Any]]) -> list[str]:
    """What the many-accounts targets compare: each block's pairs of runs at c64."""
    paired = [p for p in points if p.get("paired_rps") and p.get("reference_rps")]
    if not paired:
        return []
    return [
        "\nThe many-accounts targets: after each block's rounds, pairs of runs at c64 "
        "seconds apart, one with the block's keys and one with a single key, in turn "
        "first; medians, and the ratio pair by pair: "
        + ", ".join(
            f"{_accounts(p['accounts'])} {p['distribution']}: "
            f"{shown(p['paired_rps'])} against {shown(p['reference_rps'])} req/s, "
            f"{shown(stats.ratio(p['paired_rps'], p['reference_rps']), 3)}"
            + _spread(p.get("reference_ratios"), "pairs", 3, "")
            for p in paired
        )
        + "."
    ]


def _targets_lines(h: dict[str, Any]) -> list[str]:
    out = [
        "",
        "## Targets (issue 4)",
        "",
        "| target | measured | limit | met |",
        "|---|---:|---:|---|",
    ]
    for t in h["targets"]:
        measured = t["measured"]
        figure = shown(measured, 3) if isinstance(measured, float) else shown(measured)
        out.append(f"| {t['target']} | {figure} | {t['op']} {t['limit']} | {shown(t['met'])} |")
    return out


def _sweep_lines(results: dict[str, Any]) -> list[str]:
    sweep = results.get("sweep")
    if not sweep:
        return []
    out = ["", "## Sweep: concurrency (1 account)", ""]
    out += [
        "In the sweeps wrk builds every request in Lua, for one key as for a million, so "
        "their points differ in the proxy's work only (the side-by-side table above uses "
        "wrk's static request, its fastest path).",
        "",
    ]
    points = [*sweep["concurrency"], *[p for p in sweep["gateway"] if p["accounts"] == 1]]
    conns = sorted({p["connections"] for p in points})
    names = list(dict.fromkeys(p["configuration"] for p in points))
    out += ["| configuration | " + " | ".join(f"c{c} req/s (p99 ms)" for c in conns) + " |"]
    out += ["|---|" + "---:|" * len(conns)]
    for name in names:
        cells = {p["connections"]: p for p in points if p["configuration"] == name}
        out.append(
            f"| {name} | "
            + " | ".join(
                f"{shown(cells[c]['rps'])} ({shown(cells[c]['p99_ms'], 2)})" if c in cells else "-"
                for c in conns
            )
            + " |"
        )
    if sweep["gateway"]:
        out += ["", "## Sweep: gateway, accounts x key distribution x concurrency", ""]
        out += ["| accounts | keys | " + " | ".join(f"c{c} req/s (p99 ms)" for c in conns) + " |"]
        out += ["|---:|---|" + "---:|" * len(conns)]
        groups = dict.fromkeys((p["accounts"], p["distribution"]) for p in sweep["gateway"])
        for accounts, dist in groups:
            cells = {
                p["connections"]: p
                for p in sweep["gateway"]
                if (p["accounts"], p["distribution"]) == (accounts, dist)
            }
            out.append(
                f"| {accounts:,} | {dist} | "
                + " | ".join(
                    f"{shown(cells[c]['rps'])} ({shown(cells[c]['p99_ms'], 2)})"
                    if c in cells
                    else "-"
                    for c in conns
                )
                + " |"
            )
        out += _reference_lines(sweep["gateway"])
        for e in sweep.get("exactness", []):
            if "fill_s" in e:
                out.append(_key_cache_fill(e))
            if "rss_kb_start" in e:
                out.append(
                    f"\nGateway RSS with {_accounts(e['accounts'])}: "
                    f"{e['rss_kb_start'] / 1024:.1f} -> {e['rss_kb_end'] / 1024:.1f} MiB "
                    "over the sweep."
                )
    return out


def _key_cache_fill(block: dict[str, Any]) -> str:
    """How a block of many accounts found the gateway's key cache (harness.fill_key_cache)."""
    text = (
        f"\nBefore the runs with {_accounts(block['accounts'])}, wrk sent the keys in turn "
        f"for {block['fill_s']} s, until the gateway had cached {block['keys_seen']:,} of them"
    )
    if "rss_kb_cold" in block:
        text += (
            f" (RSS {block['rss_kb_cold'] / 1024:.1f} -> {block['rss_kb_start'] / 1024:.1f} MiB)"
        )
    if "first_sight_rps" in block:
        text += (
            f"; its first run, every call a key the gateway had not seen: "
            f"{shown(block['first_sight_rps'])} req/s at c64"
        )
    cache = block.get("key_cache") or {}
    looked_up = cache.get("hit", 0) + cache.get("miss", 0)
    if looked_up:
        share = cache.get("hit", 0) / looked_up
        text += f". During the runs, {share:.2%} of calls found their key cached"
    return text + "."


def write(results: dict[str, Any], args: argparse.Namespace, folder: Path) -> list[Path]:
    """Complete ``results``; write JSON, Markdown and plot, as latest and timestamped."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results.setdefault("versions", provenance.versions())
    results.update(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        machine=provenance.machine(),
        git=provenance.git(),
        quick=args.quick,
        command=" ".join(["python -m loadtests.bench", *_argv(args)]),
    )
    results["headline"] = figures.headline(results)
    for key in figures.TOP_LEVEL:
        results[key] = results["headline"][key]
    body = orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    text = markdown(results)
    paths = [folder / "latest.json", folder / "latest.md", folder / "latest.png"]
    for p in (folder / f"{stamp}.json", paths[0]):
        p.write_bytes(body)
    for p in (folder / f"{stamp}.md", paths[1]):
        p.write_text(text)
    if full_run(args):
        update_readme(results)
        replace_section(
            README, runs.README_START, runs.README_END, runs.markdown(runs.full_runs(folder))
        )
    if plot(results, folder / f"{stamp}.png"):
        (folder / "latest.png").write_bytes((folder / f"{stamp}.png").read_bytes())
    else:
        paths.pop()
    return paths


def full_run(args: argparse.Namespace) -> bool:
    """Only a run of the whole plan replaces the README's table."""
    return not (args.quick or args.skip_sweep or args.skip_gateway or args.only)


def _argv(args: argparse.Namespace) -> list[str]:
    out = []
    if args.quick:
        out.append("--quick")
    if args.skip_sweep:
        out.append("--skip-sweep")
    if args.skip_gateway:
        out.append("--skip-gateway")
    if args.only:
        out.append(f"--only {args.only}")
    if args.redis_aof:
        out.append("--redis-aof")
    return out
