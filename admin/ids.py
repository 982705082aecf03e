"""Public ids: a type prefix and 22 random base62 characters (~131 bits), from ``secrets``.

The prefix says what an id names (``acct_``, ``proj_``, ``key_``), so an id
pasted into the wrong route is recognisably wrong. Ledger entries keep their
Postgres identity number; in the API (credits and the balance history alike) they
read ``le_<number>`` (``meter.entry_kinds.entry_id``), the same string the credit
script remembers.
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_CHARS = 22

ACCOUNT = "acct"
PROJECT = "proj"
API_KEY = "key"
PERSON = "pers"
MEMBER = "mem"
TOKEN = "tok"
TAX_ID = "txi"
PAYMENT = "pay"
REFUND = "rfd"
THRESHOLD = "thr"
WEBHOOK_ENDPOINT = "we"
DELIVERY = "dlv"
INVOICE = "inv"

_SHAPE = re.compile(r"[a-z]{1,8}_[0-9A-Za-z]{1,64}")


def new_id(prefix: str) -> str:
    return f"{prefix}_" + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_CHARS))


def well_formed(value: str, prefix: str) -> bool:
    """Shape only: ``prefix_`` and base62; says nothing about whether it exists."""
    return value.startswith(prefix + "_") and _SHAPE.fullmatch(value) is not None
