"""The arithmetic of the report, as pure functions: medians, per-call costs, ratios, targets."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def median(values: Iterable[float | None]) -> float | None:
    """Median of the numbers given, ignoring None and NaN; None when nothing is left."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.median(clean) if clean else None


def per_call_us(cpu_seconds: float, calls: int) -> float | None:
    """CPU microseconds per call; None when no call completed."""
    return cpu_seconds * 1e6 / calls if calls > 0 else None


def per_call(count: int, calls: int) -> float | None:
    return count / calls if calls > 0 else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarize(
    samples: Sequence[Mapping[str, Any]], fields: Iterable[str]
) -> dict[str, float | None]:
    """Per field, the median over the samples (each a flat mapping of numbers)."""
    return {f: median(s.get(f) for s in samples) for f in fields}


def summarize_nested(
    samples: Sequence[Mapping[str, Mapping[str, float | None]]], key: str
) -> dict[str, float | None]:
    """Medians of a nested mapping field, e.g. ``cpu_us_per_call`` per process role."""
    roles = sorted({role for s in samples for role in s.get(key, {})})
    return {role: median(s.get(key, {}).get(role) for s in samples) for role in roles}


def within(value: float | None, base: float | None, fraction: float) -> bool | None:
    """Is ``value`` no more than ``fraction`` below ``base``? (None when unknown)."""
    if value is None or base is None or base == 0:
        return None
    return value >= base * (1 - fraction)


def check(measured: float | None, op: str, limit: float) -> bool | None:
    """Compare a measured figure with a target (``>=`` or ``<=``); None when not measured."""
    if measured is None:
        return None
    return measured >= limit if op == ">=" else measured <= limit


def growth_fraction(first: float | None, last: float | None) -> float | None:
    """(last - first) / first: how much a figure grew over a run (RSS flatness)."""
    if first is None or last is None or first == 0:
        return None
    return (last - first) / first


def shown(value: Any, digits: int = 0, suffix: str = "") -> str:
    """A figure as the reports print it: "-" when missing, yes/no, 1,234.5 with ``suffix``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}{suffix}"
    return str(value)
