"""Billing-profile countries and tax registrations: pure checks, no I/O.

Countries are ISO 3166-1 alpha-2 codes as pycountry knows them. Tax ids are
named as Stripe names them (``eu_vat``, ``gb_vat``, ...) and checked by
python-stdnum, which owns every length, format and check-digit rule; this
module only says which type is for which countries and turns stdnum's
exceptions into messages a customer can act on.

Values are stored as stdnum's ``validate`` returns them (its ``compact`` form),
so each type accepts the separators its stdnum module strips and no others.
An ``eu_vat`` value always carries its country's VIES prefix (``EL`` for
Greece), whether or not the customer typed it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

import pycountry
from stdnum.au import abn
from stdnum.ca import bn
from stdnum.ch import vat as ch_vat
from stdnum.eu import vat as eu_vat
from stdnum.exceptions import (
    InvalidChecksum,
    InvalidComponent,
    InvalidFormat,
    InvalidLength,
    ValidationError,
)
from stdnum.gb import vat as gb_vat
from stdnum.in_ import gstin
from stdnum.no import mva
from stdnum.us import ein

if TYPE_CHECKING:
    from stdnum.util import NumberValidationModule

COUNTRY_CODES: tuple[str, ...] = tuple(sorted(country.alpha_2 for country in pycountry.countries))


def check_country(code: str) -> str:
    """The ISO 3166-1 alpha-2 code, upper-cased; ValueError if it is not one."""
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise ValueError(f"must be a two-letter ISO 3166-1 country code such as DE, not {code!r}")
    upper = code.upper()
    if pycountry.countries.get(alpha_2=upper) is None:
        raise ValueError(f"{upper} is not an ISO 3166-1 country code")
    return upper


def country_name(code: str) -> str:
    """The name people use (pycountry's common name, e.g. "Taiwan"), for display."""
    country = pycountry.countries.lookup(check_country(code))
    return str(getattr(country, "common_name", None) or country.name)


@dataclass(frozen=True, slots=True)
class TaxIdType:
    """A kind of tax id: the stdnum module that checks it and where it may be registered."""

    name: str  # Stripe's tax id type
    label: str
    module: NumberValidationModule
    countries: frozenset[str]
    region: str  # where it is issued, for messages
    prefixed: bool = False  # eu_vat: the value starts with its country's VIES prefix


@dataclass(frozen=True, slots=True)
class TaxId:
    type: str
    country: str
    value: str  # stdnum's compact form: what Stripe and VIES are sent
    display: str  # stdnum's format() where the module has one, else the value


class TaxIdError(ValueError):
    """One wrong field of a tax registration: ``field`` is "type", "country" or "value"."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _national(name: str, label: str, module: NumberValidationModule, country: str) -> TaxIdType:
    region = f"{country_name(country)} ({country})"
    return TaxIdType(name, label, module, frozenset({country}), region)


# stdnum's list also holds XI (Northern Ireland's prefix), which is no ISO country;
# Northern Ireland is GB here.
_EU_MEMBER_STATES = frozenset(
    cc.upper() for cc in eu_vat.MEMBER_STATES if pycountry.countries.get(alpha_2=cc)
)

TAX_ID_TYPES: Mapping[str, TaxIdType] = MappingProxyType(
    {
        kind.name: kind
        for kind in (
            _national("au_abn", "Australian Business Number", abn, "AU"),
            _national("ca_bn", "Canadian Business Number", bn, "CA"),
            _national("ch_vat", "Swiss VAT number", ch_vat, "CH"),
            TaxIdType(
                "eu_vat", "EU VAT number", eu_vat, _EU_MEMBER_STATES, "an EU member state", True
            ),
            _national("gb_vat", "UK VAT number", gb_vat, "GB"),
            _national("in_gst", "Indian GSTIN", gstin, "IN"),
            _national("no_vat", "Norwegian VAT number", mva, "NO"),
            _national("us_ein", "US Employer Identification Number", ein, "US"),
        )
    }
)


def check_tax_id(type: str, country: str, value: str) -> TaxId:
    """The registration normalised, or TaxIdError naming the first wrong field."""
    kind = _tax_id_type(type)
    code = _registration_country(kind, country)
    return _tax_id(kind, code, _number(kind, code, value))


def check_all(type: str, country: str, value: str) -> tuple[TaxId | None, list[tuple[str, str]]]:
    """The registration, or None and every wrong ``(field, message)``, for one reply.

    The value is judged only when the type is known and, for a prefixed type,
    the country is one of its own: otherwise there is no rule to judge it by.
    """
    errors: list[tuple[str, str]] = []
    kind: TaxIdType | None = None
    code: str | None = None
    try:
        kind = _tax_id_type(type)
    except TaxIdError as exc:
        errors.append((exc.field, exc.message))
    try:
        code = check_country(country) if kind is None else _registration_country(kind, country)
    except ValueError as exc:
        errors.append(("country", str(exc)))
    if kind is None or (code is None and kind.prefixed):
        return None, errors
    try:
        number = _number(kind, code or "", value)
    except TaxIdError as exc:
        errors.append((exc.field, exc.message))
    if errors or code is None:
        return None, errors
    return _tax_id(kind, code, number), []


def _tax_id_type(name: str) -> TaxIdType:
    kind = TAX_ID_TYPES.get(name)
    if kind is None:
        raise TaxIdError("type", f"must be one of {', '.join(TAX_ID_TYPES)}")
    return kind


def _registration_country(kind: TaxIdType, country: str) -> str:
    try:
        code = check_country(country)
    except ValueError as exc:
        raise TaxIdError("country", str(exc)) from None
    if code not in kind.countries:
        raise TaxIdError(
            "country",
            f"{kind.label}s are issued in {kind.region}, not in {country_name(code)} ({code})",
        )
    return code


def _tax_id(kind: TaxIdType, country: str, number: str) -> TaxId:
    display = cast("Callable[[str], str] | None", getattr(kind.module, "format", None))
    return TaxId(kind.name, country, number, display(number) if display else number)


def _number(kind: TaxIdType, country: str, value: str) -> str:
    if not value.strip():
        raise TaxIdError("value", "must not be blank")
    try:
        return _eu_vat_number(country, value) if kind.prefixed else kind.module.validate(value)
    except InvalidLength:  # before InvalidFormat: stdnum derives it from InvalidFormat
        problem = "it has too many or too few characters"
    except InvalidFormat:
        problem = "it has characters that do not belong or a part is missing"
    except InvalidChecksum:
        problem = "its check digits do not match, so a character is probably mistyped"
    except InvalidComponent:
        problem = "a part of it is not a known code (such as its region, office or suffix)"
    except ValidationError:
        problem = "it does not pass the checks for this type"
    raise TaxIdError("value", f"is not a valid {kind.label}: {problem}")


def _eu_vat_number(country: str, value: str) -> str:
    prefix = "EL" if country == "GR" else country  # VIES, and so Stripe, name Greece EL
    try:
        own = eu_vat.compact(value)  # InvalidComponent: no VAT prefix of any country
    except InvalidComponent:
        return eu_vat.validate(prefix + value)
    if own[:2] == prefix or (prefix == "EL" and own[:2] == "GR"):
        return eu_vat.validate(prefix + own[2:])
    try:  # a national number whose first letters are another prefix (French HR3032...)
        return eu_vat.validate(prefix + value)
    except ValidationError:
        raise TaxIdError(
            "value",
            f"starts with {own[:2]}, but VAT numbers of {country_name(country)} "
            f"start with {prefix}",
        ) from None
