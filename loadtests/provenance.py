"""Where a benchmark ran: the machine, the versions of what was measured, the git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent


def _run(*cmd: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_total_gib() -> float | None:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(kb / 1024 / 1024, 1)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("aiohttp", "uvloop", "httptools", "hiredis", "redis", "orjson"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "missing"
    out["wrk"] = _run("wrk", "-v").splitlines()[0] if _run("wrk", "-v") else ""
    out["nginx"] = _run("nginx", "-v") or _run("/usr/sbin/nginx", "-v")
    out["redis_server"] = _run("redis-server", "--version")
    return out


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "hostname": platform.node(),
    }


def git() -> dict[str, Any]:
    return {
        "commit": _run("git", "rev-parse", "HEAD") or None,
        "dirty": bool(_run("git", "status", "--porcelain", "--untracked-files=no")),
    }


def where() -> dict[str, Any]:
    """What a run's figures depend on: the machine, the versions, the commit, the time."""
    return {
        "machine": machine(),
        "versions": versions(),
        "git": git(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
