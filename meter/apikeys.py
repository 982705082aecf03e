"""API key format: recognisable, high-entropy, self-checking, stored only as a hash.

``mtr_`` + 32 base62 characters of randomness (190 bits) + 6 base62 characters
of CRC32 over the random part. Secret scanners can match ``mtr_[0-9A-Za-z]{38}``;
a mistyped key fails its checksum and is refused without a lookup. We keep only
the SHA-256 of the whole key and a short visible prefix.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

PREFIX = "mtr_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_CHARS = 32
CHECKSUM_CHARS = 6
LENGTH = len(PREFIX) + RANDOM_CHARS + CHECKSUM_CHARS
VISIBLE_PREFIX_CHARS = len(PREFIX) + 8
# Place values of the checksum's base62 digits, most significant first
# (a CRC32 is below 62**6, so six digits always hold it).
_PLACES = tuple(62**i for i in reversed(range(CHECKSUM_CHARS)))


def _checksum(body: str) -> str:
    # A gateway checks this on every key-cache miss: 0.6 us this way, 1.7 us with a
    # divmod loop.
    crc = zlib.crc32(body.encode())
    return "".join([ALPHABET[crc // place % 62] for place in _PLACES])


def generate() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_CHARS))
    return PREFIX + body + _checksum(body)


def well_formed(key: str) -> bool:
    """Shape and checksum only; says nothing about whether the key exists."""
    if len(key) != LENGTH or not key.startswith(PREFIX):
        return False
    body = key[len(PREFIX) : len(PREFIX) + RANDOM_CHARS]
    check = key[len(PREFIX) + RANDOM_CHARS :]
    # base62 is exactly ASCII letters and digits
    if not (key.isascii() and body.isalnum() and check.isalnum()):
        return False
    return secrets.compare_digest(check, _checksum(body))


# A copy of an empty SHA-256 state skips OpenSSL's digest lookup that hashlib.sha256() makes
# every time: measured inside the gateway under load, 0.6 against 1.2 us a key.
_SHA256 = hashlib.sha256()


def digest(key: str) -> str:
    """The only form of a key we store: SHA-256, hex."""
    h = _SHA256.copy()
    h.update(key.encode())
    return h.hexdigest()


def visible_prefix(key: str) -> str:
    return key[:VISIBLE_PREFIX_CHARS]
