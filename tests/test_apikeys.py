"""API key format: prefix, entropy, checksum, hashing."""

from __future__ import annotations

import hashlib
import re

import pytest

from meter import apikeys


def test_generated_keys_are_well_formed_and_distinct() -> None:
    keys = {apikeys.generate() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(r"mtr_[0-9A-Za-z]{38}", key)
        assert apikeys.well_formed(key)


@pytest.mark.parametrize("position", [4, 10, 35, 36, 41])
def test_one_changed_character_fails_the_checksum(position: int) -> None:
    key = apikeys.generate()
    swapped = "A" if key[position] != "A" else "B"
    assert not apikeys.well_formed(key[:position] + swapped + key[position + 1 :])


@pytest.mark.parametrize(
    "bad",
    ["", "mtr_", "sk_live_abc", "mtr_" + "!" * 38, "xyz_" + "A" * 38, apikeys.PREFIX + "A" * 39],
)
def test_malformed_keys(bad: str) -> None:
    assert not apikeys.well_formed(bad)


def test_digest_and_prefix() -> None:
    key = apikeys.generate()
    assert re.fullmatch(r"[0-9a-f]{64}", apikeys.digest(key))
    assert apikeys.digest(key) == apikeys.digest(key)
    assert apikeys.visible_prefix(key) == key[:12] and key.startswith(apikeys.visible_prefix(key))


def test_digest_is_plain_sha256_each_time() -> None:
    """Each digest starts from a fresh copy of the empty state: nothing carries over."""
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    assert [apikeys.digest(k) for k in ("abc", "other", "abc")] == [
        abc,
        hashlib.sha256(b"other").hexdigest(),
        abc,
    ]
