"""The headline figures of a run and the issue's targets, computed from the results.

``headline`` gives the ratios against the plain aiohttp proxy and nginx, the
latency one hop adds at 1 connection, Redis calls per admission, the sweep's
ratios and RSS growth; ``targets`` checks them against issue 4's targets.
"""

from __future__ import annotations

from typing import Any

from . import stats

# The headline figures repeated at the top level of latest.json.
TOP_LEVEL = (
    "gateway_vs_aiohttp",
    "gateway_vs_nginx",
    "added_p99_ms_c1",
    "added_p99_ms_c1_one_core",
    "redis_calls_per_admission",
)


def _config(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    r = results.get("configurations", {}).get(name)
    return r if r and r.get("status") == "ok" else None


def _get(results: dict[str, Any], name: str, *path: str) -> Any:
    node: Any = _config(results, name)
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _sweep_point(
    results: dict[str, Any], accounts: int, dist: str, connections: int
) -> dict[str, Any]:
    for p in results.get("sweep", {}).get("gateway", []):
        if (p["accounts"], p["distribution"], p["connections"]) == (accounts, dist, connections):
            return p  # type: ignore[no-any-return]
    return {}


def _sweep_rps(results: dict[str, Any], accounts: int, dist: str, connections: int) -> float | None:
    return _sweep_point(results, accounts, dist, connections).get("rps")


def _vs_one_account(results: dict[str, Any], accounts: int, dist: str) -> float | None:
    """Throughput at c64 with ``accounts`` over one account's: the medians of the block's
    pairs of runs (``Bench.reference_pairs``); without them, its c64 point against the
    one-account block's."""
    point = _sweep_point(results, accounts, dist, 64)
    if point.get("paired_rps"):
        return stats.ratio(point["paired_rps"], point.get("reference_rps"))
    return stats.ratio(point.get("rps"), _sweep_rps(results, 1, "uniform", 64))


def _per_round(results: dict[str, Any], name: str, reference: str) -> list[float]:
    """``name``'s requests/s at 64 connections over ``reference``'s, round by round: each
    round measures both within a minute, so the machine's speed moves less between them
    than between rounds (how much it moves: loadtests/README.md, "What is measured")."""
    ours = _get(results, name, "samples", "c64") or []
    theirs = _get(results, reference, "samples", "c64") or []
    ratios = [stats.ratio(a.get("rps"), b.get("rps")) for a, b in zip(ours, theirs, strict=False)]
    return [r for r in ratios if r is not None]


# Where the latency one hop adds at one connection is measured: phase -> key suffix.
ADDED_LATENCY_PHASES = {"c1": "", "c1_one_core": "_one_core"}


def added_latency_key(pct: str, suffix: str, name: str = "gateway") -> str:
    """``added_p99_ms_c1`` (the gateway), ``added_p50_ms_c1_one_core_nginx``, ..."""
    return f"added_{pct}_ms_c1{suffix}" + ("" if name == "gateway" else f"_{name}")


def _added_latency(results: dict[str, Any], names: list[str]) -> dict[str, float | None]:
    """Proxy - upstream at one connection, across cores as the machine schedules
    (``c1``) and on one core (``c1_one_core``: the hop's own work, see
    ``measure.pinned``). The medians are far steadier than p99 on a VM."""
    out: dict[str, float | None] = {}
    for phase, suffix in ADDED_LATENCY_PHASES.items():
        for pct in ("p99", "p50"):
            of = {name: _get(results, name, phase, f"{pct}_ms") for name in names}
            for name in ("gateway", "nginx", "aiohttp"):
                out[added_latency_key(pct, suffix, name)] = stats.difference(
                    of.get(name), of.get("upstream")
                )
    return out


def headline(results: dict[str, Any]) -> dict[str, Any]:
    rps = {name: _get(results, name, "c64", "rps") for name in results.get("configurations", {})}
    names = list(results.get("configurations", {}))
    redis_figures = _get(results, "gateway", "c64", "redis") or {}
    rss = _get(results, "gateway", "rss_kb") or {}
    out: dict[str, Any] = {
        "gateway_vs_aiohttp": stats.ratio(rps.get("gateway"), rps.get("aiohttp")),
        "gateway_vs_aiohttp_rounds": _per_round(results, "gateway", "aiohttp"),
        "gateway_vs_nginx": stats.ratio(rps.get("gateway"), rps.get("nginx")),
        "gateway_2w_vs_aiohttp": stats.ratio(rps.get("gateway-2w"), rps.get("aiohttp")),
        "gateway_2w_vs_nginx_2w": stats.ratio(rps.get("gateway-2w"), rps.get("nginx-2w")),
        "aiohttp_vs_nginx": stats.ratio(rps.get("aiohttp"), rps.get("nginx")),
        **_added_latency(results, names),
        "redis_calls_per_admission": redis_figures.get("calls_per_admission"),
        "redis_round_trips_per_admission": redis_figures.get("round_trips_per_admission"),
        "redis_scripts_per_admission": redis_figures.get("scripts_per_admission"),
        "redis_commands_executed_per_admission": redis_figures.get("executed_per_admission"),
        "gateway_cpu_us_per_call": _get(results, "gateway", "c64", "cpu_us_per_call", "proxy"),
        "aiohttp_cpu_us_per_call": _get(results, "aiohttp", "c64", "cpu_us_per_call", "proxy"),
        "gateway_rss_growth_after_warmup": stats.growth_fraction(
            rss.get("after_warmup"), rss.get("end")
        ),
    }
    out["variants_vs_aiohttp"] = {
        name: stats.ratio(rps[name], rps.get("aiohttp"))
        for name in names
        if name.startswith("gateway-") and name != "gateway-2w" and rps.get(name)
    }
    c64 = _sweep_rps(results, 1, "uniform", 64)
    out["sweep_c256_vs_c64"] = stats.ratio(_sweep_rps(results, 1, "uniform", 256), c64)
    out["sweep_c1024_vs_c64"] = stats.ratio(_sweep_rps(results, 1, "uniform", 1024), c64)
    out["sweep_1m_uniform_vs_1"] = _vs_one_account(results, 1_000_000, "uniform")
    out["sweep_1m_zipf_vs_1"] = _vs_one_account(results, 1_000_000, "zipf")
    for dist in ("uniform", "zipf"):
        pairs = _sweep_point(results, 1_000_000, dist, 64).get("reference_ratios")
        out[f"sweep_1m_{dist}_vs_1_pairs"] = list(pairs) if pairs else []
    exact = [
        r["exactness"]["exact"]
        for r in results.get("configurations", {}).values()
        if "exactness" in r
    ]
    exact += [e.get("exact", False) for e in results.get("sweep", {}).get("exactness", [])]
    out["exact"] = all(exact) if exact else None
    out["targets"] = targets(out)
    return out


def targets(h: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with what this run measured."""
    rows = [
        ("gateway / aiohttp throughput (goal)", "gateway_vs_aiohttp", ">=", 3.0),
        ("gateway / aiohttp throughput (floor)", "gateway_vs_aiohttp", ">=", 2.0),
        ("gateway / nginx throughput", "gateway_vs_nginx", ">=", 0.3),
        ("p99 added at 1 connection, one core (ms)", "added_p99_ms_c1_one_core", "<=", 0.3),
        ("p99 added at 1 connection, across cores (ms)", "added_p99_ms_c1", "<=", 0.3),
        ("Redis round trips per admission at c64", "redis_round_trips_per_admission", "<=", 0.2),
        ("throughput at c256 / c64", "sweep_c256_vs_c64", ">=", 0.85),
        ("throughput at c1024 / c64", "sweep_c1024_vs_c64", ">=", 0.85),
        ("1M accounts (uniform) / 1 account at c64", "sweep_1m_uniform_vs_1", ">=", 0.9),
        ("1M accounts (Zipf) / 1 account at c64", "sweep_1m_zipf_vs_1", ">=", 0.9),
        ("RSS growth after warm-up", "gateway_rss_growth_after_warmup", "<=", 0.1),
    ]
    out = [
        {"target": label, "figure": key, "op": op, "limit": limit, "measured": h.get(key),
         "met": stats.check(h.get(key), op, limit)}
        for label, key, op, limit in rows
    ]  # fmt: skip
    out.append({"target": "metering exact in every gateway run", "figure": "exact", "op": "==",
                "limit": True, "measured": h.get("exact"), "met": h.get("exact")})  # fmt: skip
    return out
