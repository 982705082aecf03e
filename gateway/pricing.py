"""The price table: which route a call is and what it costs. Pure; the file is read once.

The table is TOML (``METER_PRICES``; the built-in ``prices.toml`` when unset).
Money is integer micros (1 USD = 1_000_000)::

    [default]                 # calls that match no route
    price = 1000              # ... cost this much, or:
    # refuse = true           # ... are refused with 404

    [[routes]]                # routes are tried in file order; the first match wins
    name = "models"           # [A-Za-z0-9_.:-]{1,64}: the metric label and usage-event route
    match = "GET /v1/models"  # METHOD (or *) + path pattern
    price = 0                 # a fixed price

    [[routes]]
    name = "chat"
    match = "POST /v1/chat/*"
    max_price = 100000        # variable cost: reserved before forwarding...
    unit_price = 10           # ... settled at units x unit_price (capped at max_price)
    units_header = "X-Units-Used"   # ... from this upstream response header (the default)

    [[routes]]                # variable cost with several kinds of unit, each priced
    name = "llm"
    match = "POST /v1/completions"
    max_price = 200000        # reserved before forwarding; the cost is capped at it
    units = [                 # cost = sum of units x price over the kinds
      { kind = "input", price = 2, from = "json:usage.prompt_tokens" },
      { kind = "output", price = 8, from = "json:usage.completion_tokens" },
    ]

Path patterns: literal segments, ``{name}`` for exactly one segment, and ``*``
as the last segment for zero or more segments.

The gateway prices exactly the path the upstream will route, because it
forwards the path it priced: ``canonical_path`` turns the request path into one
canonical form, the route is matched on that, and that form is what the
upstream receives. Canonical means (RFC 3986 6.2.2): percent-escapes of
unreserved characters decoded and every other escape in upper case, nothing
else changed (``/v1/%63hat`` is ``/v1/chat``, ``a%3ab`` is ``a%3Ab``),
empty segments merged (``/v1//chat`` is ``/v1/chat``), a trailing slash kept
but not significant for matching. A fragment (``#...``) is never forwarded nor
priced. A path that upstreams read in different ways is refused (400 bad-path),
never defaulted: dot segments (``.``, ``..``, escaped or not), an escaped slash
or backslash (``%2F``, ``%5C``), a backslash, a ``;`` (path parameters, which
Tomcat and Spring cut off before routing), NUL and other control characters,
escapes that are not valid UTF-8 or not ``%XX``. Paths are matched case by case,
as nginx and most frameworks route them; behind an upstream that routes case-
insensitively, use ``[default] refuse = true`` so that no spelling of a priced
path falls to a cheaper default.

Methods: a route's method matches that method only, ``*`` any method; ``HEAD``
also matches the routes of ``GET`` (servers answer HEAD with the GET handler),
the first match in file order winning as always. CONNECT and TRACE are never
forwarded (the server refuses them with 501 before pricing).

A variable-cost response whose units header is missing or not a whole number
is charged the maximum (``units_cost`` says so, and the gateway counts it).

Units (``units``, at most 8 kinds): ``kind`` names it (``[a-z][a-z0-9_]{0,31}``,
unique in the route), ``price`` is micros per unit (a whole number >= 0; one
kind at least above 0), ``from`` says where the upstream reports it:

    header:<Name>      a response header (read when the head arrives)
    trailer:<Name>     a trailer of a chunked response (read at its end)
    json:<a.b.c>       a key path (``[A-Za-z0-9_-]`` keys, at most 8) in the response
                       body: the JSON body, or, for ``text/event-stream``, the last
                       event whose ``data`` has the path with a value that is not null

A route reading nothing but headers settles when the head arrives; one reading
a trailer or the body settles once the body has passed (``usage_meter.py``).
Every kind must be found as a whole number (a header's digits, a JSON integer)
or the call is charged ``max_price`` (``usage_cost`` says why). ``unit_price``
with ``units_header`` is the one-kind spelling of ``units`` (kind ``units``,
``from = "header:<units_header>"``); the two spellings exclude each other.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from meter.settings import ConfigError

# Package data, read by path: an editable install made before this package had an
# __init__.py maps it as a namespace, which importlib.resources cannot read.
BUILTIN_TABLE = Path(__file__).with_name("prices.toml")
DEFAULT_UNITS_HEADER = "X-Units-Used"
DEFAULT_ROUTE_NAME = "default"
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_METHOD = re.compile(r"\*|[A-Z]{1,20}")
_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}")
_MAX_MICROS = 1 << 53  # prices stay exact as Lua numbers (doubles)
_MAX_UNITS_DIGITS = 18
_MAX_UNITS = 10**_MAX_UNITS_DIGITS - 1
_MAX_KINDS = 8
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PATH = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}")

# What a variable-cost call's unit reading is: the units, or why they are not known.
Reading = int | str
MISSING = "missing"  # not sent (no such header, trailer, key or event)
INVALID = "invalid"  # sent, but not a whole number of units
TOO_LARGE = "too_large"  # in a body or event larger than the gateway reads
ENCODED = "encoded"  # in a compressed body (Content-Encoding), which is not read
CUT = "cut"  # the response (or its client) broke off before it came


@dataclass(frozen=True, slots=True)
class Unit:
    """One kind of unit of a variable-cost route, its price, and where it is reported."""

    kind: str
    price: int  # micros per unit
    source: str  # "header", "trailer" or "json"
    name: str  # the header or trailer name, or the JSON key path, as written

    @property
    def field(self) -> bytes:
        """The header or trailer name, lower-cased (for ``headers.find``)."""
        return self.name.lower().encode("latin-1")

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.name.split("."))


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    method: str  # "*" matches any method
    pattern: str  # as written, for messages
    segments: tuple[str | None, ...]  # literal segment, or None for a {param}
    rest: bool  # the pattern ends in "*"
    price: int  # the fixed price, or the reserve (max_price) of a variable-cost route
    unit_price: int | None = None  # the one-kind spelling (units_header) ...
    units_header: str | None = None
    units: tuple[Unit, ...] = ()  # ... or several kinds; filled from the above when empty
    settles_late: bool = False  # a unit comes from a trailer or the body (set from units)
    reads_body: bool = False  # a unit comes from the body (set from units)

    def __post_init__(self) -> None:
        units = self.units
        if not units and self.unit_price is not None:
            header = self.units_header or DEFAULT_UNITS_HEADER
            units = (Unit("units", self.unit_price, "header", header),)
            object.__setattr__(self, "units", units)
        object.__setattr__(self, "settles_late", any(u.source != "header" for u in units))
        object.__setattr__(self, "reads_body", any(u.source == "json" for u in units))

    @property
    def variable(self) -> bool:
        return bool(self.units)

    def matches(self, method: str, path: tuple[str, ...]) -> bool:
        if (
            self.method != method
            and self.method != "*"
            and not (method == "HEAD" and self.method == "GET")
        ):
            return False
        n = len(self.segments)
        if len(path) != n and not (self.rest and len(path) >= n):
            return False
        for want, got in zip(self.segments, path, strict=False):
            if want is not None and want != got:
                return False
        return True


@dataclass(frozen=True, slots=True)
class PriceTable:
    routes: tuple[Route, ...]
    default: Route | None  # None: unmatched calls are refused

    def match(self, method: str, path: tuple[str, ...]) -> Route | None:
        for route in self.routes:
            if route.matches(method, path):
                return route
        return self.default


class Unpriceable(ValueError):
    """A request path upstreams may route in more than one way: refused, not priced."""


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_HEX = frozenset("0123456789abcdefABCDEF")
# After decoding: characters upstreams treat as separators, or that end strings.
_FORBIDDEN = frozenset("/\\;") | frozenset(chr(c) for c in range(32)) | {"\x7f"}


def canonical_path(raw_path: str) -> tuple[tuple[str, ...], str]:
    """(the segments a path is priced by, the path the upstream is sent) or Unpriceable.

    ``raw_path`` is the request target's path, before any ``?``, still percent-encoded.
    """
    if not raw_path.startswith("/"):
        raise Unpriceable("The request target must be a path (origin-form)")
    segments: list[str] = []
    encoded: list[str] = []
    for raw in raw_path.split("/"):
        if not raw:
            continue
        if not raw.isascii():
            raise Unpriceable("The path has bytes that must be percent-encoded")
        if "\\" in raw or ";" in raw:
            raise Unpriceable("Backslashes and ';' in a path are read differently by upstreams")
        if "%" in raw:
            segment = _decoded(raw)
            raw = _ESCAPE.sub(_normal_escape, raw)
        else:
            segment = raw
        if segment in (".", ".."):
            raise Unpriceable("The path has dot segments")
        if not _FORBIDDEN.isdisjoint(segment):
            raise Unpriceable("The path has an escaped '/', '\\' or ';', or a control character")
        segments.append(segment)
        encoded.append(raw)
    path = "/" + "/".join(encoded)
    if encoded and raw_path.endswith("/"):
        path += "/"
    return tuple(segments), path


def _normal_escape(escape: re.Match[str]) -> str:
    """RFC 3986 6.2.2: an unreserved character's escape is the character; others in upper case."""
    char = chr(int(escape.group(1), 16))
    return char if char in _UNRESERVED else escape.group(0).upper()


def _decoded(raw: str) -> str:
    """A segment's percent-escapes decoded, refused unless each is %XX and all is UTF-8."""
    parts = raw.split("%")
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise Unpriceable("The path has a '%' that is not a %XX escape")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise Unpriceable("The path's escapes are not UTF-8") from None


@dataclass(frozen=True, slots=True)
class Priced:
    """A request target as priced: its route (None: the table refuses it) and the
    target to forward (the canonical path, the query as sent, no fragment)."""

    route: Route | None
    target: str


class RouteCache:
    """``canonical_path`` + ``match`` remembered per (method, path): the work of a path
    is done once, a call then costs a dict lookup.

    ``lookup`` answers ``Priced``, or raises Unpriceable. Bounded: emptied when full,
    so distinct paths cost memory only up to ``size`` entries.
    """

    def __init__(self, table: PriceTable, size: int = 4096) -> None:
        self.table = table
        self.size = size
        self._seen: dict[str, tuple[Route | None, str] | str] = {}

    def lookup(self, method: str, target: str) -> Priced:
        if "#" in target:  # a fragment is the client's own: never sent on
            target = target.partition("#")[0]
        path, mark, query = target.partition("?")
        key = method + " " + path
        seen = self._seen
        hit = seen.get(key)
        if hit is None:
            try:
                segments, canonical = canonical_path(path)
            except Unpriceable as exc:
                hit = str(exc)
            else:
                hit = (self.table.match(method, segments), canonical)
            if len(seen) >= self.size:
                seen.clear()
            seen[key] = hit
        if isinstance(hit, str):
            raise Unpriceable(hit)
        route, canonical = hit
        if canonical != path:
            target = canonical + mark + query
        return Priced(route, target)


def units_cost(route: Route, units_value: str | None) -> tuple[int, bool]:
    """(cost, header was valid) of a one-kind variable-cost call, from its header's value."""
    cost, why = usage_cost(route, [read_units(units_value)])
    return cost, why is None


def read_units(value: str | bytes | None) -> Reading:
    """A header's or trailer's value as units: its digits (spaces around allowed), or why not."""
    if value is None:
        return MISSING
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_UNITS_DIGITS:
        return INVALID
    return int(text)


def json_units(value: object) -> Reading:
    """A JSON value as units: a whole number >= 0 (not a float, not true), or INVALID."""
    if type(value) is int and 0 <= value <= _MAX_UNITS:
        return value
    return INVALID


def usage_cost(route: Route, readings: Sequence[Reading]) -> tuple[int, str | None]:
    """(cost, None) of a variable-cost call whose every unit is known: the sum of units x
    price over its kinds, capped at the reserve; else (the reserve, why the first unknown
    unit is not known)."""
    cost = 0
    for unit, reading in zip(route.units, readings, strict=True):
        if isinstance(reading, str):
            return route.price, reading
        cost += reading * unit.price
    return min(cost, route.price), None


# -- loading and validation ------------------------------------------------------------


def load_prices(path: str | None) -> PriceTable:
    """The table at ``path`` (or the built-in one); ConfigError naming METER_PRICES if bad."""
    if path:
        source = path
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"METER_PRICES={path!r}: cannot read: {exc}") from None
    else:
        source = "<built-in gateway/prices.toml>"
        text = BUILTIN_TABLE.read_text(encoding="utf-8")
    return parse_prices(text, source)


def parse_prices(text: str, source: str = "<string>") -> PriceTable:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"METER_PRICES={source!r}: not valid TOML: {exc}") from None
    try:
        return _table(doc)
    except _Bad as bad:
        raise ConfigError(f"METER_PRICES={source!r}: {bad}") from None


class _Bad(ValueError):
    pass


def _table(doc: Mapping[str, Any]) -> PriceTable:
    _only(doc, {"default", "routes"}, "the table")
    if "default" not in doc:
        raise _Bad("[default] is missing: set price = <micros> or refuse = true")
    default = _default(_section(doc["default"], "[default]"))
    raw_routes = doc.get("routes", [])
    if not isinstance(raw_routes, list):
        raise _Bad("routes must be an array of tables ([[routes]])")
    routes: list[Route] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_routes):
        where = f"routes[{i}]"
        entry = _section(raw, where)
        name = entry.get("name")
        if isinstance(name, str):
            where = f"routes[{i}] ({name!r})"
        route = _route(entry, where)
        if route.name in seen or route.name == DEFAULT_ROUTE_NAME:
            raise _Bad(f"{where}: name {route.name!r} is already used")
        seen.add(route.name)
        routes.append(route)
    return PriceTable(tuple(routes), default)


def _default(entry: Mapping[str, Any]) -> Route | None:
    _only(entry, {"price", "refuse"}, "[default]")
    refuse = entry.get("refuse", False)
    if not isinstance(refuse, bool):
        raise _Bad("[default]: refuse must be true or false")
    if refuse:
        if "price" in entry:
            raise _Bad("[default]: set either price or refuse = true, not both")
        return None
    if "price" not in entry:
        raise _Bad("[default]: price is missing")
    return Route(
        DEFAULT_ROUTE_NAME, "*", "*", (), True, _micros(entry["price"], "[default]: price")
    )


def _route(entry: Mapping[str, Any], where: str) -> Route:
    _only(
        entry, {"name", "match", "price", "max_price", "unit_price", "units_header", "units"}, where
    )
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Bad(f"{where}: name must match [A-Za-z0-9_.:-]{{1,64}}, got {name!r}")
    method, segments, rest = _pattern(entry.get("match"), where)
    pattern = str(entry["match"])
    variable = {"max_price", "unit_price", "units_header", "units"} & entry.keys()
    if "price" in entry:
        if variable:
            raise _Bad(f"{where}: a fixed price excludes {', '.join(sorted(variable))}")
        price = _micros(entry["price"], f"{where}: price")
        return Route(name, method, pattern, segments, rest, price)
    if "units" in entry:
        one_kind = sorted({"unit_price", "units_header"} & entry.keys())
        if one_kind:
            raise _Bad(f"{where}: units excludes {', '.join(one_kind)} (set it as a unit)")
        if "max_price" not in entry:
            raise _Bad(f"{where}: units needs max_price (the reserve)")
        max_price = _micros(entry["max_price"], f"{where}: max_price")
        units = _units(entry["units"], where)
        if max_price == 0 or all(u.price == 0 for u in units):
            raise _Bad(f"{where}: max_price and a unit's price must be above 0 (use price = 0)")
        return Route(name, method, pattern, segments, rest, max_price, units=units)
    if not {"max_price", "unit_price"} <= entry.keys():
        raise _Bad(f"{where}: set price, or max_price and unit_price")
    max_price = _micros(entry["max_price"], f"{where}: max_price")
    unit_price = _micros(entry["unit_price"], f"{where}: unit_price")
    if unit_price == 0 or max_price == 0:
        raise _Bad(f"{where}: max_price and unit_price must be above 0 (use price = 0)")
    header = entry.get("units_header", DEFAULT_UNITS_HEADER)
    if not isinstance(header, str) or not _HEADER.fullmatch(header):
        raise _Bad(f"{where}: units_header must be a header name, got {header!r}")
    return Route(name, method, pattern, segments, rest, max_price, unit_price, header)


def _units(raw: Any, where: str) -> tuple[Unit, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > _MAX_KINDS:
        raise _Bad(f"{where}: units must be an array of 1 to {_MAX_KINDS} tables")
    units: list[Unit] = []
    for i, item in enumerate(raw):
        at = f"{where}: units[{i}]"
        entry = _section(item, at)
        _only(entry, {"kind", "price", "from"}, at)
        kind = entry.get("kind")
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise _Bad(f"{at}: kind must match [a-z][a-z0-9_]{{0,31}}, got {kind!r}")
        if any(u.kind == kind for u in units):
            raise _Bad(f"{at}: kind {kind!r} is already used")
        if "price" not in entry:
            raise _Bad(f"{at}: price is missing (micros per unit)")
        price = _micros(entry["price"], f"{at}: price")
        source, name = _source(entry.get("from"), at)
        units.append(Unit(kind, price, source, name))
    return tuple(units)


def _source(raw: Any, where: str) -> tuple[str, str]:
    kinds = "header:<Name>, trailer:<Name> or json:<key.path>"
    if not isinstance(raw, str):
        raise _Bad(f"{where}: from must be {kinds}, got {raw!r}")
    source, _, name = raw.partition(":")
    if source in ("header", "trailer"):
        if not _HEADER.fullmatch(name):
            raise _Bad(f"{where}: from = {raw!r}: {name!r} is not a header name")
    elif source == "json":
        if not _PATH.fullmatch(name):
            raise _Bad(
                f"{where}: from = {raw!r}: want a key path like usage.total_tokens"
                " ([A-Za-z0-9_-] keys joined by '.', at most 8)"
            )
    else:
        raise _Bad(f"{where}: from must be {kinds}, got {raw!r}")
    return source, name


def _pattern(raw: Any, where: str) -> tuple[str, tuple[str | None, ...], bool]:
    if not isinstance(raw, str):
        raise _Bad(f"{where}: match must be a string like 'POST /v1/chat/*'")
    method, _, path = raw.strip().partition(" ")
    path = path.strip()
    if not _METHOD.fullmatch(method) or not path.startswith("/"):
        raise _Bad(f"{where}: match must be 'METHOD /path' (METHOD upper case or *), got {raw!r}")
    parts = [p for p in path.split("/") if p]
    rest = bool(parts) and parts[-1] == "*"
    if rest:
        parts.pop()
    segments: list[str | None] = []
    for part in parts:
        if _PARAM.fullmatch(part):
            segments.append(None)
        elif "*" in part or "{" in part or "}" in part or part in {".", ".."}:
            raise _Bad(
                f"{where}: bad segment {part!r} in {raw!r}"
                " ('*' only as the last segment, '{name}' as a whole segment)"
            )
        else:
            segments.append(unquote(part))
    return method, tuple(segments), rest


def _micros(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_MICROS:
        raise _Bad(f"{where} must be a whole number of micros >= 0, got {value!r}")
    return value


def _section(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise _Bad(f"{where} must be a table")
    return raw


def _only(entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise _Bad(f"{where}: unknown field(s) {', '.join(unknown)}")


# -- a plan's prices ---------------------------------------------------------------------


class BadPrices(ValueError):
    """Prices that do not fit the deployment's table (the message says why)."""


def priced_routes(table: PriceTable) -> dict[str, Route]:
    """The table's routes by name, its default (when it has one) as ``default``."""
    named = {r.name: r for r in table.routes}
    if table.default is not None:
        named[DEFAULT_ROUTE_NAME] = table.default
    return named


def parse_override(table: PriceTable, spec: Mapping[str, Any]) -> dict[str, Route]:
    """The table's routes at a plan's prices: ``{route: {"price": n}}`` for a fixed-price
    route, ``{route: {"max_price": n, "units": {kind: n}}}`` for a variable-cost one (a
    kind left out keeps its price; so does ``max_price``). Only prices change: which route
    a call is, and where its units come from, are the table's. BadPrices if it does not
    fit the table."""
    routes = priced_routes(table)
    if not isinstance(spec, Mapping) or not spec:
        raise BadPrices("prices must name at least one route")
    out: dict[str, Route] = {}
    for name, entry in spec.items():
        base = routes.get(name)
        if base is None:
            raise BadPrices(f"no route {name!r} in the price table (routes: {', '.join(routes)})")
        try:
            out[name] = _overridden(base, _section(entry, f"prices.{name}"), f"prices.{name}")
        except _Bad as bad:
            raise BadPrices(str(bad)) from None
    return out


def _overridden(base: Route, entry: Mapping[str, Any], where: str) -> Route:
    if not base.variable:
        _only(entry, {"price"}, f"{where} (a fixed-price route)")
        if "price" not in entry:
            raise _Bad(f"{where}: price is missing")
        return replace(base, price=_micros(entry["price"], f"{where}: price"))
    _only(entry, {"max_price", "units"}, f"{where} (a variable-cost route)")
    max_price = base.price
    if "max_price" in entry:
        max_price = _micros(entry["max_price"], f"{where}: max_price")
    prices = _section(entry.get("units", {}), f"{where}: units")
    kinds = {u.kind for u in base.units}
    unknown = sorted(set(prices) - kinds)
    if unknown:
        raise _Bad(f"{where}: units has no kind {unknown[0]!r} (kinds: {', '.join(sorted(kinds))})")
    units = tuple(
        replace(u, price=_micros(prices[u.kind], f"{where}: units.{u.kind}"))
        if u.kind in prices
        else u
        for u in base.units
    )
    if max_price == 0 or all(u.price == 0 for u in units):
        raise _Bad(f"{where}: max_price and a unit's price must be above 0 (use price = 0)")
    return replace(base, price=max_price, units=units, unit_price=None, units_header=None)


def override_spec(routes: Mapping[str, Route]) -> dict[str, dict[str, Any]]:
    """``parse_override``'s input for ``routes``: what is stored and shown."""
    spec: dict[str, dict[str, Any]] = {}
    for name, r in routes.items():
        if r.variable:
            spec[name] = {"max_price": r.price, "units": {u.kind: u.price for u in r.units}}
        else:
            spec[name] = {"price": r.price}
    return spec
