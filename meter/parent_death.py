"""A child process that stops when its parent dies, however the parent dies.

A parent killed outright (``kill -9``, the OOM killer) runs no cleanup: its children
would go on running, holding ports and data folders. Linux sends a child a chosen
signal when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing happens.
Used by the gateway's supervisor for its workers and by ``meter dev`` for everything
it starts.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_parent(parent: int, signum: int = signal.SIGTERM) -> bool:
    """In the child: be sent ``signum`` when ``parent`` (the pid this child was forked
    from) dies. False when the platform cannot. If the parent is already gone, the
    signal is sent now: nobody else will send it. The setting survives ``exec``, and is
    dropped by a later change of user (set it after switching users)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
    return True


def preexec(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``subprocess.Popen(preexec_fn=...)`` that applies ``stop_with_parent`` in the
    child, after Popen has switched users. Call it in the parent, in the thread that
    will outlive the child (Linux ties the signal to the thread that forked)."""
    parent = os.getpid()

    def apply() -> None:
        stop_with_parent(parent, signum)

    return apply
