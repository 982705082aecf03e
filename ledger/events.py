"""Usage events as the admission scripts append them, and stream ids.

A stream entry (see ``meter/lua/admit.lua`` and ``settle.lua``) has the fields
t (d debit, r refund, x refused: signal only), a account, p project, k API key,
r route, m amount in micros, d UTC day the call was admitted, g signal bits and,
on a refund, o the admitted event's id. The entry id ("ms-seq") is the event's
identity and its time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

MS_PER_DAY = 86_400_000

DEBIT = "d"
REFUND = "r"
SIGNAL_ONLY = "x"
KINDS = frozenset({DEBIT, REFUND, SIGNAL_ONLY})


class MalformedEvent(ValueError):
    """A stream entry that is not a usage event; it is skipped, never guessed at."""


@dataclass(frozen=True, slots=True, order=True)
class StreamId:
    ms: int
    seq: int

    @classmethod
    def parse(cls, raw: str | bytes) -> StreamId:
        text = raw.decode() if isinstance(raw, bytes) else raw
        ms, sep, seq = text.partition("-")
        if not sep or not ms.isdigit() or not seq.isdigit():
            raise ValueError(f"not a stream id: {text!r}")
        return cls(int(ms), int(seq))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


ZERO = StreamId(0, 0)


class UsageEvent(NamedTuple):
    """One usage event. A NamedTuple rather than our usual frozen dataclass: the worker
    makes one per event at 50,000+ a second, and a tuple is built four times faster."""

    id: str  # the stream entry id, "ms-seq"
    ms: int
    seq: int
    kind: str
    account_id: str
    project_id: str
    key_id: str
    route: str
    amount: int  # micros, >= 0
    call_day: int
    signals: int
    refund_of: str | None = None

    @property
    def day(self) -> int:
        """The UTC day of the entry's stream time: the raw event's partition."""
        return self.ms // MS_PER_DAY

    @property
    def net_debit(self) -> int:
        """What this event took from the balance (a refund gives back: negative)."""
        if self.kind == DEBIT:
            return self.amount
        if self.kind == REFUND:
            return -self.amount
        return 0


# The field order admit.lua and settle.lua write: the fast path of ``parse_event``.
_ORDER = (b"t", b"a", b"p", b"k", b"r", b"m", b"d")
_LAST = (b"g", b"o")  # admit.lua ends with the signals, settle.lua with the refunded id


def parse_event(
    entry_id: bytes | str, fields: Mapping[bytes, bytes] | Sequence[bytes]
) -> UsageEvent:
    """One stream entry, undecoded, as redis-py returns it (a dict of fields) or as the
    raw reply has it (a flat list: name, value, name, value ...) -> a usage event."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    # The fast path (not isinstance(.., Mapping): that ABC check costs as much as a parse).
    # Anything unexpected falls through to the checked path below.
    if type(fields) is list and len(fields) == 16:
        f = fields
        try:
            if (f[0], f[2], f[4], f[6], f[8], f[10], f[12]) == _ORDER and f[14] in _LAST:
                kind = f[1].decode()
                amount = int(f[11])
                if kind in KINDS and amount >= 0:
                    ms, _, seq = eid.partition("-")
                    signal_field = f[14] == b"g"
                    return UsageEvent(
                        eid,
                        int(ms),
                        int(seq),
                        kind,
                        f[3].decode(),
                        f[5].decode(),
                        f[7].decode(),
                        f[9].decode(),
                        amount,
                        int(f[13]),
                        int(f[15]) if signal_field else 0,
                        None if signal_field else f[15].decode(),
                    )
        except (ValueError, UnicodeDecodeError):
            pass
    if not isinstance(fields, Mapping):
        pairs = iter(fields)
        fields = dict(zip(pairs, pairs, strict=False))
    try:
        ms, _, seq = eid.partition("-")
        kind = fields[b"t"].decode()
        if kind not in KINDS:
            raise MalformedEvent(f"{eid}: unknown event type {kind!r}")
        amount = int(fields[b"m"])
        if amount < 0:
            raise MalformedEvent(f"{eid}: negative amount")
        refund_of = fields.get(b"o")
        return UsageEvent(
            id=eid,
            ms=int(ms),
            seq=int(seq),
            kind=kind,
            account_id=fields[b"a"].decode(),
            project_id=fields[b"p"].decode(),
            key_id=fields[b"k"].decode(),
            route=fields[b"r"].decode(),
            amount=amount,
            call_day=int(fields[b"d"]),
            signals=int(fields.get(b"g", b"0")),
            refund_of=None if refund_of is None else refund_of.decode(),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, MalformedEvent):
            raise
        raise MalformedEvent(f"{eid}: {exc!r}") from None
