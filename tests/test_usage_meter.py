"""The usage meter, pure: units from event streams, JSON bodies, headers and trailers.

Every stream is also fed split into chunks in every way (hypothesis): the
readings must not depend on where the network cut the body.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.headers import Pairs
from gateway.pricing import CUT, ENCODED, INVALID, MISSING, TOO_LARGE, Reading, Unit
from gateway.usage_meter import (
    EventStreamUnits,
    JsonBodyUnits,
    UsageMeter,
    is_event_stream,
)

PATHS = [("usage", "prompt_tokens"), ("usage", "completion_tokens")]
SSE: Pairs = [(b"Content-Type", b"text/event-stream; charset=utf-8")]
JSON: Pairs = [(b"Content-Type", b"application/json")]


def chunk(content: str) -> bytes:
    """An OpenAI-style content chunk (usage null until the last chunk)."""
    doc = {"choices": [{"delta": {"content": content}}], "usage": None}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def usage(prompt: object, completion: object) -> bytes:
    doc = {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


OPENAI = chunk("Hel") + chunk("lo") + usage(12, 30) + b"data: [DONE]\n\n"


def sse(body: bytes, cuts: list[int] | None = None) -> list[Reading]:
    meter = EventStreamUnits(PATHS, limit=1024)
    for part in split(body, cuts or []):
        meter.feed(part)
    return meter.end()


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(body)) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


@pytest.mark.parametrize(
    ("body", "readings"),
    [
        (OPENAI, [12, 30]),
        (chunk("a") + chunk("b") + b"data: [DONE]\n\n", [MISSING, MISSING]),  # no usage asked
        (b"", [MISSING, MISSING]),
        (usage(1, 2) + usage(3, 4), [3, 4]),  # the last event wins
        (usage(5, 6) + chunk("after"), [5, 6]),  # usage null later does not erase it
        (usage(1, 2).replace(b"\n\n", b"\r\n\r\n"), [1, 2]),  # CRLF
        (usage(1, 2).replace(b"\n\n", b"\r\r"), [1, 2]),  # CR
        (b"\xef\xbb\xbf" + usage(1, 2), [1, 2]),  # a byte order mark
        (b": keep-alive\n\nevent: usage\nid: 7\n" + usage(1, 2), [1, 2]),  # comments, fields
        (b'data:{"usage":{"prompt_tokens":1,\ndata: "completion_tokens":2}}\n\n', [1, 2]),
        (b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}\n', [MISSING, MISSING]),
        (b'data: {"usage": {"prompt_tokens": 1}}\n\n', [1, MISSING]),
        (usage(1.5, 2), [INVALID, 2]),
        (usage(-1, 2), [INVALID, 2]),
        (usage("3", True), [INVALID, INVALID]),
        (usage(10**19, 2), [INVALID, 2]),
        (b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 2\n\n', [MISSING, MISSING]),
        (b'data: ["usage", "prompt_tokens", "completion_tokens"]\n\n', [MISSING, MISSING]),
        (b'data: {"text": "\\"prompt_tokens\\": 9"}\n\n', [MISSING, MISSING]),  # in a string
        (b"data: " + b"x" * 2000 + b"\n\n" + usage(1, 2), [1, 2]),  # an event over the limit
        (usage(1, 2) + b"data: " + b"x" * 2000 + b"\n\n", [1, 2]),
        (
            b'data: {"usage": {"prompt_tokens": 1, "p": "' + b"x" * 2000 + b'"}}\n\n',
            [TOO_LARGE] * 2,
        ),
        (b"data: " + b"x" * 600 + b"\ndata: " + b"y" * 600 + b"\n\n", [TOO_LARGE] * 2),
    ],
)
def test_event_stream_readings(body: bytes, readings: list[Reading]) -> None:
    assert sse(body) == readings
    assert sse(body, [1]) == readings
    assert sse(body, list(range(len(body)))) == readings  # byte by byte


STREAMS = [
    OPENAI,
    OPENAI.replace(b"\n", b"\r\n"),
    OPENAI.replace(b"\n", b"\r"),
    b"data: " + b"x" * 1500 + b"\r\n\r\n" + usage(7, 8) + b": done\r\n\r\n",
    b'data:{"usage":{\r\ndata:"prompt_tokens":4,\rdata:"completion_tokens":5}}\r\n\n',
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(STREAMS), st.lists(st.integers(0, 2000), max_size=12))
def test_event_stream_readings_do_not_depend_on_the_chunks(body: bytes, cuts: list[int]) -> None:
    assert sse(body, cuts) == sse(body)
    assert sse(body)[0] != MISSING


def test_a_content_chunk_is_not_decoded() -> None:
    """The fast path: whole events without a unit's key are only searched."""
    meter = EventStreamUnits(PATHS)
    for _ in range(100):
        meter.feed(chunk("content"))
    meter.feed(usage(1, 2) + b"data: [DONE]\n\n")
    assert (meter.end(), meter.decoded) == ([1, 2], 1)


def test_event_stream_holds_at_most_the_limit() -> None:
    meter = EventStreamUnits(PATHS, limit=1024)
    meter.feed(b"data: ")
    for _ in range(1000):
        meter.feed(b"x" * 1000)  # one endless line
        assert len(meter._line) <= 1024 and meter._size <= 1024
    meter.feed(b"\n\n" + usage(1, 2))
    assert meter.end() == [1, 2]


def test_a_cut_stream_keeps_what_it_saw() -> None:
    meter = EventStreamUnits(PATHS)
    meter.feed(b'data: {"usage": {"prompt_tokens": 3}}\n\n' + chunk("more"))
    assert meter.cut() == [3, CUT]


@pytest.mark.parametrize(
    ("body", "readings"),
    [
        (b'{"id": 1, "usage": {"prompt_tokens": 5, "completion_tokens": 6}}', [5, 6]),
        (b'{"usage": {"prompt_tokens": 5}}', [5, MISSING]),
        (b'{"usage": null}', [MISSING, MISSING]),
        (b'{"usage": {"prompt_tokens": 5.0, "completion_tokens": "6"}}', [INVALID, INVALID]),
        (b"not json, prompt_tokens", [MISSING, MISSING]),
        (b"", [MISSING, MISSING]),
        (b'{"usage": {"prompt_tokens": 5, "completion_tokens": 6}, "pad": "' + b"x" * 2000, None),
    ],
)
def test_json_body_readings(body: bytes, readings: list[Reading] | None) -> None:
    meter = JsonBodyUnits(PATHS, limit=1024)
    for i in range(0, len(body), 7):
        meter.feed(body[i : i + 7])
    assert meter.end() == (readings or [TOO_LARGE, TOO_LARGE])


def test_json_body_cut() -> None:
    meter = JsonBodyUnits(PATHS)
    meter.feed(b'{"usage": {"prompt_tokens": 5, "completion_tokens": 6}}')
    assert meter.cut() == [CUT, CUT]  # half a document proves nothing


def units(*sources: str) -> list[Unit]:
    return [Unit(f"k{i}", 1, *s.split(":", 1)) for i, s in enumerate(sources)]


@pytest.mark.parametrize(
    ("route", "head", "body", "trailers", "readings", "source"),
    [
        (units("header:X-In"), [(b"x-in", b" 4 ")], b"", [], [4], "header"),
        (units("header:X-In"), [], b"", [], [MISSING], "header"),
        (units("header:X-In"), [(b"X-In", b"4.5")], b"", [], [INVALID], "header"),
        (units("trailer:X-U"), [], b"", [(b"X-U", b"9")], [9], "trailer"),
        (units("trailer:X-U"), [(b"X-U", b"9")], b"", [], [MISSING], "trailer"),  # not a header
        (
            units("json:usage.total_tokens"),
            JSON,
            b'{"usage": {"total_tokens": 3}}',
            [],
            [3],
            "json",
        ),
        (units("json:usage.total_tokens"), [], b'{"usage": {"total_tokens": 3}}', [], [3], "json"),
        (
            units("json:usage.total_tokens"),
            SSE,
            b'data: {"usage": {"total_tokens": 3}}\n\n',
            [],
            [3],
            "sse",
        ),
        (
            units("json:usage.total_tokens"),
            [*JSON, (b"Content-Encoding", b"gzip")],
            b"\x1f\x8b...",
            [],
            [ENCODED],
            "json",
        ),
        (
            units("header:X-In", "json:usage.out", "trailer:X-T"),
            [*SSE, (b"X-In", b"1")],
            b'data: {"usage": {"out": 2}}\n\n',
            [(b"x-t", b"3")],
            [1, 2, 3],
            "header+sse+trailer",
        ),
    ],
)
def test_usage_meter_reads_every_source(
    route: list[Unit],
    head: Pairs,
    body: bytes,
    trailers: Pairs,
    readings: list[Reading],
    source: str,
) -> None:
    meter = UsageMeter(route, head)
    meter.feed(body)
    assert meter.source == source
    assert meter.end(trailers) == readings


def test_usage_meter_cut() -> None:
    meter = UsageMeter(units("header:X-In", "json:usage.out", "trailer:X-T"), [(b"x-in", b"1")])
    meter.feed(b'{"usage": {"out": 2}}')
    assert meter.cut() == [1, CUT, CUT]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"text/event-stream", True),
        (b"Text/Event-Stream ; charset=utf-8", True),
        (b"application/json", False),
        (b"text/event-streams", False),
        (None, False),
    ],
)
def test_is_event_stream(value: bytes | None, expected: bool) -> None:
    assert is_event_stream(value) is expected
