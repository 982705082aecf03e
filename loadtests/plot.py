"""The picture of a run: throughput per configuration, against concurrency, against accounts.

Needs matplotlib (the ``load`` extra); ``plot`` returns False without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _accounts(n: int) -> str:
    return f"{n:,} account" + ("" if n == 1 else "s")


Point = dict[str, Any]


def _lines(ax: Any, groups: dict[str, list[Point]], field: str, title: str, log_y: bool) -> None:
    """One line per group: ``field`` against connections, on a log-2 x axis."""
    ticks: set[int] = set()
    for label, points in groups.items():
        series = sorted((p["connections"], p[field]) for p in points if p.get(field) is not None)
        ticks.update(c for c, _ in series)
        ax.plot([c for c, _ in series], [v for _, v in series], marker="o", label=label)
    ax.set_xscale("log", base=2)
    if log_y:
        ax.set_yscale("log")
    if ticks:
        ax.set_xticks(sorted(ticks), [f"{c:,}" for c in sorted(ticks)])
        ax.legend(fontsize=8)
    ax.set_xlabel("connections")
    ax.set_title(title)


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    names = [n for n, r in results.get("configurations", {}).items() if r.get("status") == "ok"]
    values = [results["configurations"][n]["c64"]["rps"] for n in names]
    colors = ["#e8a33d" if n.startswith("gateway") else "#6b8fb3" for n in names]
    ax = axes[0][0]
    bars = ax.bar(names, values, color=colors)
    ax.bar_label(bars, labels=[f"{v / 1000:.1f}k" for v in values], fontsize=8)
    ax.set_title("requests/s at 64 connections (median)")
    ax.tick_params(axis="x", rotation=30)

    sweep = results.get("sweep") or {}
    one_account: dict[str, list[Point]] = {}
    for p in [*sweep.get("concurrency", []), *sweep.get("gateway", [])]:
        if p["accounts"] == 1:
            one_account.setdefault(p["configuration"], []).append(p)
    by_accounts: dict[str, list[Point]] = {}
    for p in sweep.get("gateway", []):
        by_accounts.setdefault(f"{_accounts(p['accounts'])}, {p['distribution']}", []).append(p)
    _lines(axes[0][1], one_account, "rps", "requests/s vs concurrency (1 account)", True)
    _lines(axes[1][0], one_account, "p99_ms", "p99 latency (ms) vs concurrency (1 account)", True)
    _lines(axes[1][1], by_accounts, "rps", "gateway requests/s vs accounts and keys", False)
    fig.suptitle(f"meter benchmark {results['date']} ({results['machine']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
