"""Benchmark accounts and their API keys, and how a load generator picks among them.

Account ``i`` (0-based) has one project and one API key, all with ids derived
from ``i`` so a run is reproducible and a million of them are made in a couple
of seconds. Keys are real ``mtr_`` keys (the checksum is valid; the gateway
refuses a malformed one before any lookup), drawn from a seeded generator.

Picking a key: ``uniform`` gives every account the same share; ``zipf`` gives
the account of rank ``k`` (1-based, in file order) a share proportional to
``1 / k**s``, the usual shape of real API traffic (a few heavy customers, a long
tail). ``wrk_keys.lua`` does the same picking inside wrk; ``pick`` here is its
reference, tested in ``tests/test_loadtests.py``.
"""

from __future__ import annotations

import bisect
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from meter import apikeys, keys

DEFAULT_ZIPF_S = 0.99  # YCSB's default skew
_ALPHABET = apikeys.ALPHABET.encode()
# Byte -> base62 character: a slight bias towards the first 8 characters is
# harmless for benchmark keys and makes a million keys one translate() call.
_TO_BASE62 = bytes(_ALPHABET[i % len(_ALPHABET)] for i in range(256))


@dataclass(frozen=True, slots=True)
class BenchAccount:
    index: int
    account_id: str
    project_id: str
    key_id: str
    key: str
    shard: int


def account_id(index: int) -> str:
    return f"acct_bench{index:012d}"


def project_id(index: int) -> str:
    return f"proj_bench{index:012d}"


def key_id(index: int) -> str:
    return f"key_bench{index:012d}"


def _base62(value: int, width: int) -> bytes:
    out = bytearray(width)
    for i in range(width - 1, -1, -1):
        value, digit = divmod(value, 62)
        out[i] = _ALPHABET[digit]
    return bytes(out)


def generate_keys(count: int, seed: int = 4) -> list[str]:
    """``count`` well-formed API keys (see ``meter.apikeys``), the same for the same seed."""
    width = apikeys.RANDOM_CHARS
    raw = random.Random(seed).randbytes(width * count).translate(_TO_BASE62)
    prefix = apikeys.PREFIX.encode()
    out = []
    for i in range(count):
        body = raw[i * width : (i + 1) * width]
        out.append((prefix + body + _base62(zlib.crc32(body), apikeys.CHECKSUM_CHARS)).decode())
    if out and not apikeys.well_formed(out[0]):  # the key format moved on: fail loudly
        raise RuntimeError("generated API keys are not well formed; update loadtests/keyspace.py")
    return out


def accounts(count: int, shards: int, seed: int = 4, start: int = 0) -> Iterator[BenchAccount]:
    """Accounts ``start .. count-1``; keys are those of ``generate_keys(count, seed)``."""
    api_keys = generate_keys(count, seed)
    for i in range(start, count):
        acct = account_id(i)
        yield BenchAccount(
            i, acct, project_id(i), key_id(i), api_keys[i], keys.shard_of(acct, shards)
        )


def write_keys_file(path: Path, api_keys: Sequence[str]) -> Path:
    path.write_text("\n".join(api_keys) + "\n")
    return path


# -- picking ------------------------------------------------------------------------


def zipf_cdf(n: int, s: float = DEFAULT_ZIPF_S) -> list[float]:
    """Cumulative weights of ranks 1..n under Zipf(s), normalised to end at 1.0."""
    if n < 1:
        raise ValueError("n must be >= 1")
    total = 0.0
    cdf = []
    for k in range(1, n + 1):
        total += 1.0 / k**s
        cdf.append(total)
    return [c / total for c in cdf]


def pick(cdf: Sequence[float], u: float) -> int:
    """The 0-based index whose cumulative share first reaches ``u`` (0 <= u < 1)."""
    return min(bisect.bisect_left(cdf, u), len(cdf) - 1)


def pick_uniform(n: int, u: float) -> int:
    return min(int(u * n), n - 1)


class KeyPicker:
    """Index picker for ``n`` keys, ``uniform`` or ``zipf`` (used by the locust file)."""

    def __init__(
        self,
        n: int,
        distribution: str = "uniform",
        s: float = DEFAULT_ZIPF_S,
        rng: random.Random | None = None,
    ) -> None:
        if distribution not in ("uniform", "zipf"):
            raise ValueError(f"unknown distribution {distribution!r}")
        self.n = n
        self.rng = rng or random.Random()
        self.cdf = zipf_cdf(n, s) if distribution == "zipf" else None

    def __call__(self) -> int:
        u = self.rng.random()
        return pick(self.cdf, u) if self.cdf is not None else pick_uniform(self.n, u)
