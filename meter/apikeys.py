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
_ALPHABET_SET = frozenset(ALPHABET)


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_CHARS)


def generate() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_CHARS))
    return PREFIX + body + _checksum(body)


def well_formed(key: str) -> bool:
    """Shape and checksum only; says nothing about whether the key exists."""
    if len(key) != LENGTH or not key.startswith(PREFIX):
        return False
    body = key[len(PREFIX) : len(PREFIX) + RANDOM_CHARS]
    check = key[len(PREFIX) + RANDOM_CHARS :]
    if not _ALPHABET_SET.issuperset(body) or not _ALPHABET_SET.issuperset(check):
        return False
    return secrets.compare_digest(check, _checksum(body))


def digest(key: str) -> str:
    """The only form of a key we store: SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def visible_prefix(key: str) -> str:
    return key[:VISIBLE_PREFIX_CHARS]
