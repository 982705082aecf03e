"""CPU time and memory of a process and its descendants, read from /proc.

A multi-worker gateway runs its workers as children: their CPU is counted by
walking the process tree at each sample (``cutime`` would only count children
that have exited). Parsing is split from reading so it can be tested on text.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from meter.local_servers import alive  # re-exported: running, a zombie counted as ended

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def parse_stat(text: str) -> tuple[int, int]:
    """``/proc/<pid>/stat`` -> (ppid, utime + stime in clock ticks)."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return int(rest[1]), int(rest[11]) + int(rest[12])


def parse_vmrss_kb(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0  # a zombie has no VmRSS


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def tree(root: int) -> list[int]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        text = _read(entry / "stat")
        if text is None:
            continue
        ppid, _ = parse_stat(text)
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def end_descendants(grace_s: float = 10.0) -> list[int]:
    """Stop every process this one started that still runs: SIGTERM, SIGKILL after
    ``grace_s``; children are reaped. Returns the pids that had to be stopped."""
    me = os.getpid()
    left = [pid for pid in tree(me) if pid != me and alive(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if _ended(left, grace_s):
            break
    return left


def _ended(pids: list[int], within_s: float) -> bool:
    """Whether all of ``pids`` end within ``within_s``, reaping those that are children."""
    deadline = time.monotonic() + within_s
    while True:
        for pid in pids:
            with contextlib.suppress(ChildProcessError):  # not ours to reap, or reaped
                os.waitpid(pid, os.WNOHANG)
        if not any(alive(pid) for pid in pids):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def pin(root: int, cpus: set[int]) -> None:
    """Run every thread of ``root`` and its descendants on ``cpus`` only."""
    for pid in tree(root):
        try:
            tasks = [int(t.name) for t in (PROC / str(pid) / "task").iterdir()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tasks:
            with contextlib.suppress(ProcessLookupError):  # the thread has just ended
                os.sched_setaffinity(tid, cpus)


def cpu_seconds(root: int) -> float:
    """user + system CPU of ``root`` and its live descendants, in seconds."""
    ticks = 0
    for pid in tree(root):
        text = _read(PROC / str(pid) / "stat")
        if text is not None:
            ticks += parse_stat(text)[1]
    return ticks / CLOCK_TICKS


def parse_schedstat_ns(text: str) -> int:
    """``/proc/<pid>/task/<tid>/schedstat`` -> nanoseconds the thread has run."""
    return int(text.split()[0])


def run_ns(root: int) -> dict[tuple[int, int], int]:
    """(pid, tid) -> nanoseconds run, for every thread of ``root`` and its descendants.

    The kernel's own count (``sum_exec_runtime``), of which ``/proc/<pid>/stat`` gives
    utime + stime rounded to clock ticks (10 ms): the same CPU, read to the nanosecond,
    so that a measurement of a fraction of a second is exact too.
    """
    out = {}
    for pid in tree(root):
        try:
            tasks = list((PROC / str(pid) / "task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for task in tasks:
            text = _read(task / "schedstat")
            if text is not None:
                out[(pid, int(task.name))] = parse_schedstat_ns(text)
    return out


def run_seconds_between(
    before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]
) -> float:
    """CPU seconds between two ``run_ns`` readings; a thread that ended in between takes
    what it ran since the first reading with it (threads that start are counted whole)."""
    return sum(ns - before.get(key, 0) for key, ns in after.items()) / 1e9


def rss_kb(root: int) -> int:
    """Resident memory of ``root`` and its live descendants, summed (KiB)."""
    total = 0
    for pid in tree(root):
        text = _read(PROC / str(pid) / "status")
        if text is not None:
            total += parse_vmrss_kb(text)
    return total


def process_count(root: int) -> int:
    return len(tree(root))


def parse_system_busy(stat_text: str) -> tuple[float, float]:
    """The ``cpu`` line of ``/proc/stat`` -> (process time, total) in seconds, all cores.

    Process time is user + nice + system: what processes are charged. Interrupt
    and softirq time (loopback networking under load runs there: about a core at
    one connection here) and steal are left out, so that what is left over after
    subtracting the processes under test is other programs' work.
    """
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            ticks = [int(v) for v in line.split()[1:]]
            return sum(ticks[:3]) / CLOCK_TICKS, sum(ticks[:8]) / CLOCK_TICKS
    raise ValueError("no cpu line in /proc/stat")


def system_busy_seconds() -> float:
    """CPU seconds all processes together have been charged since boot."""
    return parse_system_busy((PROC / "stat").read_text())[0]


def machine_busy_cores(interval: float) -> float:
    """How many cores the machine kept busy over the next ``interval`` seconds."""
    import time

    before, t0 = system_busy_seconds(), time.monotonic()
    time.sleep(interval)
    return (system_busy_seconds() - before) / (time.monotonic() - t0)
