"""Run wrk and read its report.

``parse`` is pure (wrk's text in, a ``WrkResult`` out) and tested on captured
output. ``run`` starts ``wrk --latency`` with ``wrk_keys.lua`` and returns the
parsed result with wrk's own CPU time (from ``wait4``), so the harness can tell
when the load generator rather than the proxy is the limit.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

LUA_SCRIPT = Path(__file__).with_name("wrk_keys.lua")

_UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"([\d.]+)(us|ms|s|m|h)")
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+(?:us|ms|s|m|h))\s*$", re.M)
_LATENCY = re.compile(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+(?:us|ms|s|m|h))", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    non_2xx: int  # wrk counts status > 399 here
    latency_avg_ms: float
    latency_max_ms: float
    percentiles_ms: dict[float, float]  # 50, 75, 90, 99
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0  # wrk's own user+system CPU time

    @property
    def ok(self) -> int:
        """Responses with a status below 400: the calls the gateway admitted."""
        return self.requests - self.non_2xx

    @property
    def p50_ms(self) -> float:
        return self.percentiles_ms.get(50.0, float("nan"))

    @property
    def p99_ms(self) -> float:
        return self.percentiles_ms.get(99.0, float("nan"))

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


def duration_ms(text: str) -> float:
    """``'1.23ms'`` -> 1.23, ``'850.00us'`` -> 0.85, ``'2.01s'`` -> 2010.0."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNIT_TO_MS[m.group(2)]


def parse(text: str) -> WrkResult:
    """Read wrk's ``--latency`` report."""
    requests = _REQUESTS.search(text)
    rps = _RPS.search(text)
    if not requests or not rps:
        raise WrkError(f"unreadable wrk output:\n{text[-2000:]}")
    latency = _LATENCY.search(text)
    avg_ms = max_ms = float("nan")
    if latency:
        avg_ms, max_ms = duration_ms(latency.group(1)), duration_ms(latency.group(3))
    sock = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        duration_s=duration_ms(requests.group(2)) / 1000.0,
        rps=float(rps.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        latency_avg_ms=avg_ms,
        latency_max_ms=max_ms,
        percentiles_ms={float(p): duration_ms(v) for p, v in _PERCENTILE.findall(text)},
        socket_errors=(
            dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
            if sock
            else {}
        ),
    )


@dataclass(frozen=True, slots=True)
class Load:
    """What wrk sends: which keys, picked how, on which path."""

    keys_file: Path | None = None
    distribution: str = "uniform"
    keys_limit: int = 0
    zipf_s: float = 0.99
    dynamic: bool = False  # build every request in Lua, even with one key (see wrk_keys.lua)

    def environment(self, connections: int) -> dict[str, str]:
        return {
            "WRK_THREADS": str(threads_for(connections)),
            "WRK_KEYS_DYNAMIC": "1" if self.dynamic else "0",
            "WRK_KEYS_FILE": str(self.keys_file or ""),
            "WRK_KEYS_DIST": self.distribution,
            "WRK_KEYS_LIMIT": str(self.keys_limit),
            "WRK_ZIPF_S": str(self.zipf_s),
        }


def threads_for(connections: int) -> int:
    return max(1, min(2, connections))


def command(
    url: str, connections: int, duration_s: float, timeout_s: float = 10.0, cpu: int | None = None
) -> list[str]:
    """wrk's command line; with ``cpu``, wrk runs on that CPU only (through taskset)."""
    threads = threads_for(connections)
    return [
        *(("taskset", "-c", str(cpu)) if cpu is not None else ()),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={int(timeout_s)}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]


def run(
    url: str, connections: int, duration_s: float, load: Load = Load(), cpu: int | None = None
) -> WrkResult:
    proc = subprocess.Popen(
        command(url, connections, duration_s, cpu=cpu),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **load.environment(connections)},
    )
    assert proc.stdout is not None
    with proc.stdout:  # closed here: os.wait4 below reaps the process, not Popen
        text = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}:\n{text[-2000:]}")
    return replace(parse(text), cpu_s=usage.ru_utime + usage.ru_stime)
