"""The price table, pure: matching, variable cost, validation. No fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.pricing import (
    CUT,
    DEFAULT_UNITS_HEADER,
    INVALID,
    MISSING,
    PriceTable,
    Reading,
    Route,
    RouteCache,
    Unit,
    Unpriceable,
    canonical_path,
    json_units,
    load_prices,
    parse_prices,
    read_units,
    units_cost,
    usage_cost,
)
from meter.settings import ConfigError

TABLE = """
[default]
price = 7

[[routes]]
name = "models"
match = "GET /v1/models"
price = 0

[[routes]]
name = "one-model"
match = "GET /v1/models/{model}"
price = 3

[[routes]]
name = "chat"
match = "POST /v1/chat/*"
max_price = 50_000
unit_price = 10

[[routes]]
name = "any-admin"
match = "* /v1/admin/*"
price = 11

[[routes]]
name = "files-deep"
match = "GET /v1/files/{id}/content"
price = 5
"""


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return parse_prices(TABLE)


def route_name(table: PriceTable, method: str, path: str) -> str | None:
    segments, _ = canonical_path(path)
    route = table.match(method, segments)
    return None if route is None else route.name


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v1/models", "models"),
        ("GET", "/v1/models/", "models"),  # a trailing slash is the same route
        ("POST", "/v1/models", "default"),  # the method matters
        ("HEAD", "/v1/models", "models"),  # HEAD is priced as the GET it mirrors
        ("HEAD", "/v1/chat", "default"),  # ... and only as GET: not as POST
        ("GET", "/v1/models/gpt", "one-model"),
        ("GET", "/v1/models/gpt/extra", "default"),  # {param} is exactly one segment
        ("POST", "/v1/chat", "chat"),  # * is zero or more segments
        ("POST", "/v1/chat/completions", "chat"),
        ("POST", "/v1/chat/a/b/c", "chat"),
        ("POST", "/v1/chatter", "default"),
        ("DELETE", "/v1/admin/x", "any-admin"),
        ("PATCH", "/v1/admin", "any-admin"),
        ("GET", "/v1/files/f1/content", "files-deep"),
        ("GET", "/v1/files/f1/other", "default"),
        ("GET", "/", "default"),
        # Priced in the canonical form the upstream is sent (canonical_path).
        ("POST", "/v1//chat/x", "chat"),
        ("POST", "/v1/%63hat/x", "chat"),
        ("POST", "//v1/chat", "chat"),
    ],
)
def test_match(table: PriceTable, method: str, path: str, expected: str) -> None:
    assert route_name(table, method, path) == expected


def test_first_match_wins() -> None:
    table = parse_prices(
        """
        [default]
        price = 1
        [[routes]]
        name = "wide"
        match = "* /v1/*"
        price = 2
        [[routes]]
        name = "narrow"
        match = "GET /v1/models"
        price = 3
        """
    )
    assert route_name(table, "GET", "/v1/models") == "wide"


@pytest.mark.parametrize(
    ("path", "segments", "forwarded"),
    [
        ("/", (), "/"),
        ("/v1/chat", ("v1", "chat"), "/v1/chat"),
        ("/v1/chat/", ("v1", "chat"), "/v1/chat/"),  # the slash is kept, not matched
        ("//v1///chat//", ("v1", "chat"), "/v1/chat/"),
        ("/v1/%63%68at", ("v1", "chat"), "/v1/chat"),  # unreserved escapes decoded
        ("/v1/a%2db%5F~", ("v1", "a-b_~"), "/v1/a-b_~"),
        ("/v1/a%20b", ("v1", "a b"), "/v1/a%20b"),  # others kept, upper case
        ("/v1/a%3ab", ("v1", "a:b"), "/v1/a%3Ab"),  # reserved: still escaped
        ("/v1/%C3%A9", ("v1", "\u00e9"), "/v1/%C3%A9"),
        ("/v1/%c3%a9", ("v1", "\u00e9"), "/v1/%C3%A9"),
        ("/v1/a%25b", ("v1", "a%b"), "/v1/a%25b"),
        ("/v1/models/gpt-4o:generate", ("v1", "models", "gpt-4o:generate"), None),
        ("/v1/x!$&'()*+,=@", ("v1", "x!$&'()*+,=@"), None),
    ],
)
def test_canonical_path(path: str, segments: tuple[str, ...], forwarded: str | None) -> None:
    assert canonical_path(path) == (segments, forwarded or path)
    # Canonical is a fixed point: the upstream's own reading of it is the same path.
    assert canonical_path(forwarded or path) == (segments, forwarded or path)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/v1/../admin", "dot segments"),
        ("/v1/./chat", "dot segments"),
        ("/v1/%2e%2e/x", "dot segments"),
        ("/a/%2E/b", "dot segments"),
        ("/..", "dot segments"),
        ("/v1%2Fchat", "escaped"),  # one segment to some upstreams, two to others
        ("/v1%2fchat", "escaped"),
        ("/v1/chat%5Cx", "escaped"),
        ("/v1\\chat", "Backslashes"),
        ("/v1/images;x=1/generations", "Backslashes and ';'"),  # Spring cuts ;x=1 off
        ("/v1/images%3Bx", "escaped"),
        ("/v1/a%00b", "control character"),
        ("/v1/a%0Ab", "control character"),
        ("/v1/a%7Fb", "control character"),
        ("/v1/a%zzb", "%XX"),
        ("/v1/a%4", "%XX"),
        ("/v1/a%", "%XX"),
        ("/v1/%C3", "UTF-8"),
        ("/v1/%FF", "UTF-8"),
        ("/v1/\u00e9", "percent-encoded"),
        ("http://h/v1/chat", "origin-form"),
        ("*", "origin-form"),
        ("", "origin-form"),
    ],
)
def test_paths_upstreams_may_read_two_ways_have_no_price(path: str, why: str) -> None:
    with pytest.raises(Unpriceable, match=why):
        canonical_path(path)


@pytest.mark.parametrize(
    ("target", "route", "forwarded"),
    [
        ("/v1/chat/x", "chat", "/v1/chat/x"),
        ("/v1/chat/x?a=1&b=%20", "chat", "/v1/chat/x?a=1&b=%20"),  # the query as sent
        ("/v1/chat/x#frag", "chat", "/v1/chat/x"),  # a fragment is never sent on
        ("/v1/chat/x?a=1#frag", "chat", "/v1/chat/x?a=1"),
        ("/v1/chat#x?y", "chat", "/v1/chat"),
        ("/v1/%63hat?q=%63", "chat", "/v1/chat?q=%63"),
        ("/v1//chat/?", "chat", "/v1/chat/?"),
        ("/nothing#/v1/chat", "default", "/nothing"),
    ],
)
def test_the_cache_prices_and_forwards_the_same_path(
    table: PriceTable, target: str, route: str, forwarded: str
) -> None:
    cache = RouteCache(table)
    for _ in range(2):  # computed, then remembered: the same answer
        priced = cache.lookup("POST", target)
        assert priced.route is not None and priced.route.name == route
        assert priced.target == forwarded


def test_the_cache_remembers_refusals_and_stays_bounded(table: PriceTable) -> None:
    cache = RouteCache(table, size=3)
    for _ in range(2):
        with pytest.raises(Unpriceable, match="escaped"):
            cache.lookup("GET", "/a%2Fb")
    for i in range(10):
        cache.lookup("GET", f"/p{i}")
    assert len(cache._seen) <= 3


def test_refused_default_matches_nothing() -> None:
    table = parse_prices(
        '[default]\nrefuse = true\n[[routes]]\nname = "a"\nmatch = "GET /a"\nprice = 1'
    )
    assert table.default is None
    assert table.match("GET", ("b",)) is None
    a = table.match("GET", ("a",))
    assert a is not None and a.price == 1


def test_variable_route_fields(table: PriceTable) -> None:
    chat = table.match("POST", ("v1", "chat"))
    assert chat is not None
    assert (chat.variable, chat.price, chat.unit_price, chat.units_header) == (
        True,
        50_000,
        10,
        DEFAULT_UNITS_HEADER,
    )
    models = table.match("GET", ("v1", "models"))
    assert models is not None and not models.variable


CHAT = Route("chat", "POST", "POST /chat", ("chat",), False, 50_000, 10, "X-Units-Used")


@pytest.mark.parametrize(
    ("header", "cost", "valid"),
    [
        ("0", 0, True),
        ("123", 1_230, True),
        (" 42 ", 420, True),
        ("5000", 50_000, True),  # exactly the reserve
        ("5001", 50_000, True),  # capped at the reserve
        ("99999999999999999", 50_000, True),
        (None, 50_000, False),  # missing: the maximum
        ("", 50_000, False),
        ("-3", 50_000, False),
        ("1.5", 50_000, False),
        ("12abc", 50_000, False),
        ("١٢", 50_000, False),  # non-ASCII digits
        ("9" * 40, 50_000, False),
    ],
)
def test_units_cost(header: str | None, cost: int, valid: bool) -> None:
    assert units_cost(CHAT, header) == (cost, valid)


def test_builtin_table_loads_and_prices_sensibly() -> None:
    table = load_prices(None)
    assert table.default is not None and table.default.price > 0
    chat = table.match("POST", ("v1", "chat", "completions"))
    assert chat is not None and chat.variable
    assert all(r.price >= 0 for r in table.routes)


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(TABLE)
    assert load_prices(str(path)) == parse_prices(TABLE)


def test_unreadable_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^METER_PRICES="):
        load_prices(str(tmp_path / "missing.toml"))


ROUTE = '[default]\nprice = 1\n[[routes]]\nname = "r"\nmatch = "GET /r"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[default\n", "not valid TOML"),
        ("[[routes]]\nname='a'\nmatch='GET /a'\nprice=1", r"\[default\] is missing"),
        ("[default]\n", r"\[default\]: price is missing"),
        ("[default]\nprice = -1", r"\[default\]: price must be a whole number"),
        ("[default]\nprice = 1.5", r"\[default\]: price must be a whole number"),
        ("[default]\nprice = true", r"\[default\]: price must be a whole number"),
        ("[default]\nprice = 1\nrefuse = true", "not both"),
        ("[default]\nrefuse = 'yes'", "refuse must be true or false"),
        ("[default]\nprice = 1\n[extra]\n", "unknown field"),
        ("routes = 3\n[default]\nprice = 1", "routes must be an array"),
        (ROUTE + "price = -5", r"routes\[0\] \('r'\): price must be a whole number"),
        (ROUTE + "price = 1\nfoo = 2", r"routes\[0\] \('r'\): unknown field\(s\) foo"),
        (ROUTE, r"routes\[0\] \('r'\): set price, or max_price and unit_price"),
        (ROUTE + "max_price = 10", "set price, or max_price and unit_price"),
        (ROUTE + "price = 1\nunit_price = 2", "a fixed price excludes unit_price"),
        (ROUTE + "max_price = 10\nunit_price = 0", "must be above 0"),
        (ROUTE + "max_price = 10\nunit_price = 1\nunits_header = 'bad header'", "units_header"),
        (
            '[default]\nprice = 1\n[[routes]]\nname = "bad name!"\nmatch = "GET /r"\nprice = 1',
            "name must match",
        ),
        ('[default]\nprice = 1\n[[routes]]\nmatch = "GET /r"\nprice = 1', r"routes\[0\]: name"),
        (
            '[default]\nprice = 1\n[[routes]]\nname = "default"\nmatch = "GET /r"\nprice = 1',
            "already used",
        ),
        (
            ROUTE + 'price = 1\n[[routes]]\nname = "r"\nmatch = "GET /s"\nprice = 1',
            r"routes\[1\] \('r'\): name 'r' is already used",
        ),
        ('[default]\nprice = 1\n[[routes]]\nname = "r"\nmatch = "get /r"\nprice = 1', "METHOD"),
        ('[default]\nprice = 1\n[[routes]]\nname = "r"\nmatch = "GET r"\nprice = 1', "METHOD"),
        ('[default]\nprice = 1\n[[routes]]\nname = "r"\nmatch = "GET"\nprice = 1', "METHOD"),
        ('[default]\nprice = 1\n[[routes]]\nname = "r"\nmatch = 5\nprice = 1', "must be a string"),
        (
            '[default]\nprice = 1\n[[routes]]\nname = "r"\nmatch = "GET /a/*/b"\nprice = 1',
            "bad segment",
        ),
        (
            '[default]\nprice = 1\n[[routes]]\nname = "r"\nmatch = "GET /a/x{y}"\nprice = 1',
            "bad segment",
        ),
        ('[default]\nprice = 1\n[[routes]]\nname = "r"\nmatch = "GET /a/../b"\nprice = 1', "bad"),
        ("routes = [3]\n[default]\nprice = 1", r"routes\[0\] must be a table"),
        ("[default]\nprice = 9007199254740993", "whole number of micros"),
    ],
)
def test_bad_tables_name_the_variable_and_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^METER_PRICES='src'") as info:
        parse_prices(text, "src")
    assert info.match(message)


# -- several kinds of unit, from headers, trailers and the body ---------------------------

LLM = """
[default]
price = 1

[[routes]]
name = "llm"
match = "POST /v1/chat/*"
max_price = 1_000

[[routes.units]]
kind = "input"
price = 2
from = "json:usage.prompt_tokens"

[[routes.units]]
kind = "output"
price = 8
from = "json:usage.completion_tokens"

[[routes]]
name = "mixed"
match = "POST /v1/mixed"
max_price = 500
units = [
  { kind = "a", price = 0, from = "header:X-A" },
  { kind = "b", price = 3, from = "trailer:X-B" },
]
"""


def test_units_of_several_kinds() -> None:
    llm, mixed = parse_prices(LLM).routes
    assert llm.units == (
        Unit("input", 2, "json", "usage.prompt_tokens"),
        Unit("output", 8, "json", "usage.completion_tokens"),
    )
    assert (llm.variable, llm.settles_late, llm.reads_body, llm.price) == (True, True, True, 1_000)
    assert llm.units[0].path == ("usage", "prompt_tokens")
    assert (mixed.settles_late, mixed.reads_body) == (True, False)
    assert mixed.units[1].field == b"x-b"
    legacy = parse_prices(TABLE).match("POST", ("v1", "chat"))
    assert legacy is not None and not legacy.settles_late
    assert legacy.units == (Unit("units", 10, "header", DEFAULT_UNITS_HEADER),)


@pytest.mark.parametrize(
    ("readings", "cost", "unknown"),
    [
        ([10, 20], 10 * 2 + 20 * 8, None),
        ([0, 0], 0, None),
        ([0, 125], 1_000, None),  # exactly the reserve
        ([1, 125], 1_000, None),  # capped at the reserve
        ([10**17, 10**17], 1_000, None),
        ([10, MISSING], 1_000, MISSING),
        ([INVALID, CUT], 1_000, INVALID),  # the first unknown one says why
    ],
)
def test_usage_cost(readings: list[Reading], cost: int, unknown: str | None) -> None:
    llm = parse_prices(LLM).routes[0]
    assert usage_cost(llm, readings) == (cost, unknown)


@pytest.mark.parametrize(
    ("value", "reading"),
    [(b"7", 7), (" 7 ", 7), (None, MISSING), (b"", INVALID), (b"-1", INVALID), ("9" * 19, INVALID)],
)
def test_read_units(value: bytes | str | None, reading: Reading) -> None:
    assert read_units(value) == reading


@pytest.mark.parametrize(
    ("value", "reading"),
    [
        (3, 3),
        (0, 0),
        (-1, INVALID),
        (2.0, INVALID),
        (True, INVALID),
        ("3", INVALID),
        (10**18, INVALID),
    ],
)
def test_json_units(value: object, reading: Reading) -> None:
    assert json_units(value) == reading


UNITS = ROUTE + "max_price = 100\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (UNITS + "units = []", "units must be an array of 1 to 8 tables"),
        (UNITS + "units = 'x'", "units must be an array"),
        (UNITS + "units = [" + "{kind='k', price=1, from='header:X'}," * 9 + "]", "1 to 8"),
        (UNITS + "units = [3]", r"units\[0\] must be a table"),
        (UNITS + "units = [{price=1, from='header:X'}]", r"units\[0\]: kind must match"),
        (UNITS + "units = [{kind='In', price=1, from='header:X'}]", "kind must match"),
        (
            UNITS + "units = [{kind='k', price=1, from='header:X'}, {kind='k', from='header:Y'}]",
            r"units\[1\]: kind 'k' is already used",
        ),
        (UNITS + "units = [{kind='k', from='header:X'}]", "price is missing"),
        (
            UNITS + "units = [{kind='k', price=1.5, from='header:X'}]",
            "price must be a whole number",
        ),
        (UNITS + "units = [{kind='k', price=-1, from='header:X'}]", "price must be a whole number"),
        (UNITS + "units = [{kind='k', price=1}]", "from must be header:<Name>"),
        (UNITS + "units = [{kind='k', price=1, from='body:x'}]", "from must be header:<Name>"),
        (UNITS + "units = [{kind='k', price=1, from='header:bad name'}]", "not a header name"),
        (UNITS + "units = [{kind='k', price=1, from='trailer:'}]", "not a header name"),
        (UNITS + "units = [{kind='k', price=1, from='json:usage..x'}]", "want a key path"),
        (UNITS + "units = [{kind='k', price=1, from='json:a.b.c.d.e.f.g.h.i'}]", "key path"),
        (UNITS + "units = [{kind='k', price=1, from='json:x', more=1}]", "unknown field"),
        (UNITS + "units = [{kind='k', price=0, from='json:x'}]", "must be above 0"),
        (ROUTE + "max_price = 0\nunits = [{kind='k', price=1, from='json:x'}]", "above 0"),
        (ROUTE + "units = [{kind='k', price=1, from='json:x'}]", "units needs max_price"),
        (UNITS + "unit_price = 1\nunits = [{kind='k', price=1, from='json:x'}]", "units excludes"),
        (ROUTE + "price = 1\nunits = [{kind='k', price=1, from='json:x'}]", "excludes units"),
    ],
)
def test_bad_units_name_the_variable_and_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^METER_PRICES='src': routes\[0\] \('r'\)") as info:
        parse_prices(text, "src")
    assert info.match(message)
