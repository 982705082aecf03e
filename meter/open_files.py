"""The process's open-files limit: one descriptor per connection, and proxies hold two."""

from __future__ import annotations

import contextlib
import resource

UNLIMITED_CAP = 1 << 20  # what "as far as allowed" asks for when the hard limit is unlimited


def raise_limit(wanted: int | None = None) -> int:
    """Raise the soft open-files limit to ``wanted`` (None: to the hard limit, as nginx's
    ``worker_rlimit_nofile`` does), never above the hard one; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_CAP if wanted is None else wanted
    if hard != resource.RLIM_INFINITY:
        target = hard if wanted is None else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft_limit()


def soft_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
