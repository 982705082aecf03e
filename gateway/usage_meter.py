"""The units a response reports, read as it passes: headers, trailers, its body. Pure.

A ``UsageMeter`` is made when a variable-cost response's head arrives, fed each
body chunk as it is relayed (the chunk goes on unchanged and at once: the meter
keeps no copy of an event stream), and asked once at the end for a reading per
unit of the route (``pricing.Reading``: the units, or why they are not known),
which ``pricing.usage_cost`` turns into money.

How the body is read, for ``json:`` units:

- ``text/event-stream``: parsed as the Server-Sent Events spec says (lines end
  in CRLF, LF or CR; a blank line ends an event; ``data:`` lines joined by LF;
  comments and other fields ignored; an event unfinished at the end of the body
  is dropped). Only the current event is held, up to ``EVENT_LIMIT`` bytes (a
  larger one is dropped: TOO_LARGE if its units are then missing). An event is
  decoded only if its data holds one of the paths' last keys as a JSON key
  (``"total_tokens"``), so ordinary content events cost a substring search; and
  a chunk of whole events holding none of them costs only that search. Each
  unit keeps the value of the last event whose JSON has its path with a value
  that is not null (OpenAI sends ``"usage": null`` until its last chunk; the
  ``[DONE]`` marker is not JSON and is skipped). Keys must be written plainly
  (a key spelled with ``\\u`` escapes is not seen: its unit is MISSING).
- Any other type: the whole body as one JSON document, kept up to
  ``BODY_LIMIT`` bytes (a larger body: TOO_LARGE), decoded at the end.
- A body with a ``Content-Encoding`` (gzip, ...) is not read: ENCODED. The
  gateway asks the upstream of such routes for ``Accept-Encoding: identity``.

A response that breaks off (the upstream, or the client going away) is read
with ``cut``: units already seen count, the others are CUT.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import orjson

from gateway.headers import Pairs, find
from gateway.pricing import CUT, ENCODED, MISSING, TOO_LARGE, Reading, Unit, json_units, read_units

EVENT_LIMIT = 1 << 16  # bytes of one server-sent event kept while it arrives
BODY_LIMIT = 1 << 20  # bytes of a JSON body kept to read its units at the end

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_EVENT_END = (b"\n\n", b"\n\r\n")  # a chunk ending so ends between events
_ABSENT = object()


def is_event_stream(content_type: bytes | None) -> bool:
    return (
        content_type is not None
        and content_type.partition(b";")[0].strip().lower() == b"text/event-stream"
    )


def _at(doc: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(doc, dict):
            return _ABSENT
        doc = doc.get(key, _ABSENT)
        if doc is _ABSENT:
            return _ABSENT
    return doc


class _Paths:
    """The JSON key paths read from a body, their readings so far, and the keys that
    must appear in a text for it to be worth decoding."""

    __slots__ = ("decoded", "found", "keys", "paths", "too_large")

    def __init__(self, paths: Sequence[tuple[str, ...]]) -> None:
        self.paths = tuple(paths)
        self.keys = tuple({b'"' + p[-1].encode() + b'"' for p in paths})
        self.found: list[Reading | None] = [None] * len(self.paths)
        self.too_large = False
        self.decoded = 0  # texts decoded (the rest were passed over by the key search)

    def worth_decoding(self, text: bytes) -> bool:
        for key in self.keys:  # noqa: SIM110 - any() and its generator cost more than this
            if key in text:
                return True
        return False

    def take(self, text: bytes) -> None:
        """The units of a JSON text whose paths are set (not null): they replace earlier ones."""
        self.decoded += 1
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        for i, path in enumerate(self.paths):
            value = _at(doc, path)
            if value is not _ABSENT and value is not None:
                self.found[i] = json_units(value)

    def readings(self, unknown: str) -> list[Reading]:
        """Each path's units; ``unknown`` (or TOO_LARGE) for those never seen."""
        if unknown == MISSING and self.too_large:
            unknown = TOO_LARGE
        return [unknown if f is None else f for f in self.found]


class EventStreamUnits:
    """``json:`` units from a ``text/event-stream`` body, parsed incrementally."""

    __slots__ = (
        "_clean",
        "_cr",
        "_data",
        "_keys",
        "_line",
        "_over",
        "_paths",
        "_size",
        "_skip",
        "_started",
        "limit",
    )

    def __init__(self, paths: Sequence[tuple[str, ...]], limit: int = EVENT_LIMIT) -> None:
        self._paths = _Paths(paths)
        self._keys = self._paths.keys
        self.limit = limit
        self._clean = False  # between events, nothing held: whole events may be skipped
        self._line = b""  # the line still arriving
        self._cr = False  # the last byte was a CR: an LF next is the same line end
        self._skip = False  # the line still arriving is past the limit: dropped
        self._data: list[bytes] = []  # the data lines of the event still arriving
        self._size = 0
        self._over = False  # the event still arriving is past the limit: dropped
        self._started = False

    def feed(self, chunk: bytes) -> None:
        if self._clean and chunk.endswith(_EVENT_END):
            for key in self._keys:
                if key in chunk:
                    break
            else:
                return  # whole events, none with a unit in it: nothing to keep
        self._feed(chunk)
        self._clean = (
            not (self._line or self._data or self._over or self._skip or self._cr) and self._started
        )

    def _feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self._started:
            chunk, self._line = self._line + chunk, b""
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._line = chunk  # perhaps the start of a byte order mark
                return
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if self._cr:
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if self._line:
            chunk = self._line + chunk
        lines = _LINE_END.split(chunk)
        rest = lines.pop()  # after the last line end: the line still arriving
        self._cr = chunk.endswith(b"\r")
        if self._skip and lines:
            self._skip = False
            del lines[0]  # the end of a line too long to keep
            self._drop_event()
        for line in lines:
            self._line_ended(line)
        if self._skip or len(rest) > self.limit:
            self._skip = True
            rest = b""
        self._line = rest

    def _line_ended(self, line: bytes) -> None:
        if not line:
            self._dispatch()
            return
        if line[0] == 0x3A:  # ":": a comment
            return
        field, _, value = line.partition(b":")
        if field != b"data" or self._over:
            return
        if value.startswith(b" "):
            value = value[1:]
        self._size += len(value) + 1
        if self._size > self.limit:
            self._drop_event()
            return
        self._data.append(value)

    def _drop_event(self) -> None:
        self._over = True
        self._data = []

    def _dispatch(self) -> None:
        data, over = self._data, self._over
        self._data, self._size, self._over = [], 0, False
        if over:
            self._paths.too_large = True
            return
        if not data:
            return
        text = data[0] if len(data) == 1 else b"\n".join(data)
        if self._paths.worth_decoding(text):
            self._paths.take(text)

    @property
    def decoded(self) -> int:
        return self._paths.decoded

    def end(self) -> list[Reading]:
        return self._paths.readings(MISSING)  # an unfinished event is dropped (the spec)

    def cut(self) -> list[Reading]:
        return self._paths.readings(CUT)


class JsonBodyUnits:
    """``json:`` units from a whole JSON body, kept up to ``limit`` bytes."""

    __slots__ = ("_chunks", "_paths", "_size", "limit")

    def __init__(self, paths: Sequence[tuple[str, ...]], limit: int = BODY_LIMIT) -> None:
        self._paths = _Paths(paths)
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.limit:
            self._paths.too_large = True
            self._chunks = []
        else:
            self._chunks.append(chunk)

    def end(self) -> list[Reading]:
        if not self._paths.too_large:
            body = b"".join(self._chunks)
            self._chunks = []
            if self._paths.worth_decoding(body):
                self._paths.take(body)
        return self._paths.readings(MISSING)

    def cut(self) -> list[Reading]:
        return self._paths.readings(CUT)


class _EncodedBody:
    """A compressed body: not read."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def feed(self, chunk: bytes) -> None:
        pass

    def end(self) -> list[Reading]:
        return [ENCODED] * self.count

    def cut(self) -> list[Reading]:
        return [ENCODED] * self.count


BodyUnits = EventStreamUnits | JsonBodyUnits | _EncodedBody


class UsageMeter:
    """The readings of one response's units, wherever its route's units come from.

    ``feed`` each body chunk; then ``end`` with the trailers (the body ended as
    framed) or ``cut`` (it broke off), once. ``source`` says where the units came
    from (``header``, ``trailer``, ``json``, ``sse``; joined by ``+``), for the metrics.
    """

    __slots__ = ("_body", "_heads", "feed", "source", "units")

    def __init__(
        self,
        units: Sequence[Unit],
        head: Pairs,
        *,
        event_limit: int = EVENT_LIMIT,
        body_limit: int = BODY_LIMIT,
    ) -> None:
        self.units = tuple(units)
        self._heads: list[Reading | None] = [
            read_units(find(head, u.field)) if u.source == "header" else None for u in units
        ]
        paths = [u.path for u in units if u.source == "json"]
        body: BodyUnits | None = None
        sources = {u.source for u in units}
        if paths:
            encoding = find(head, b"content-encoding")
            if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
                body = _EncodedBody(len(paths))
            elif is_event_stream(find(head, b"content-type")):
                body = EventStreamUnits(paths, event_limit)
                sources = (sources - {"json"}) | {"sse"}
            else:
                body = JsonBodyUnits(paths, body_limit)
            self.feed = body.feed
        else:
            self.feed = _ignore
        self._body = body
        self.source = "+".join(sorted(sources))

    def end(self, trailers: Pairs) -> list[Reading]:
        """Every unit's reading once the whole body (and its trailers) came."""
        return self._readings(
            self._body.end() if self._body is not None else [],
            lambda unit: read_units(find(trailers, unit.field)),
        )

    def cut(self) -> list[Reading]:
        """Every unit's reading when the body broke off: what was seen, CUT for the rest."""
        return self._readings(self._body.cut() if self._body is not None else [], lambda unit: CUT)

    def _readings(
        self, from_body: list[Reading], trailer: Callable[[Unit], Reading]
    ) -> list[Reading]:
        body = iter(from_body)
        out: list[Reading] = []
        for unit, head in zip(self.units, self._heads, strict=True):
            if head is not None:
                out.append(head)
            elif unit.source == "json":
                out.append(next(body))
            else:
                out.append(trailer(unit))
        return out


def _ignore(chunk: bytes) -> None:
    pass
