"""Countries and tax registrations: tables of real numbers (from stdnum's docstrings), no I/O."""

from __future__ import annotations

import pytest
from stdnum.au import abn
from stdnum.ca import bn
from stdnum.ch import vat as ch_vat
from stdnum.eu import vat as eu_vat
from stdnum.gb import vat as gb_vat
from stdnum.in_ import gstin
from stdnum.no import mva
from stdnum.us import ein

from admin.tax_registrations import (
    COUNTRY_CODES,
    TAX_ID_TYPES,
    TaxId,
    TaxIdError,
    check_all,
    check_country,
    check_tax_id,
    country_name,
)

# A word of each message, one per stdnum exception.
LENGTH = "too many or too few characters"
FORMAT = "characters that do not belong"
CHECKSUM = "check digits do not match"
COMPONENT = "not a known code"

# -- countries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"), [("DE", "DE"), ("de", "DE"), ("gR", "GR"), ("US", "US"), ("ax", "AX")]
)
def test_check_country_accepts(code: str, expected: str) -> None:
    assert check_country(code) == expected


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("", "two-letter"),
        ("D", "two-letter"),
        ("DEU", "two-letter"),
        (" de", "two-letter"),
        ("de ", "two-letter"),
        ("D1", "two-letter"),
        ("Dé", "two-letter"),
        ("ÄB", "two-letter"),
        ("Germany", "two-letter"),
        ("ZZ", "ZZ is not an ISO 3166-1 country code"),
        ("EL", "EL is not an ISO 3166-1 country code"),  # Greece's VAT prefix, not its code
        ("uk", "UK is not an ISO 3166-1 country code"),
        ("XI", "XI is not an ISO 3166-1 country code"),
    ],
)
def test_check_country_refuses(code: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_country(code)


def test_country_codes_are_every_alpha_2_code_sorted() -> None:
    assert list(COUNTRY_CODES) == sorted(set(COUNTRY_CODES))
    assert all(len(code) == 2 and code.isupper() for code in COUNTRY_CODES)
    assert {"DE", "GR", "GB", "US", "TW", "AQ"} <= set(COUNTRY_CODES)
    assert "EL" not in COUNTRY_CODES
    assert len(COUNTRY_CODES) > 240
    assert all(check_country(code) == code for code in COUNTRY_CODES)


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("DE", "Germany"),
        ("gr", "Greece"),
        ("GB", "United Kingdom"),
        ("TW", "Taiwan"),  # the common name, not "Taiwan, Province of China"
        ("BO", "Bolivia"),
    ],
)
def test_country_name(code: str, name: str) -> None:
    assert country_name(code) == name


def test_country_name_refuses_what_is_not_a_code() -> None:
    with pytest.raises(ValueError, match="not an ISO 3166-1 country code"):
        country_name("ZZ")


# -- the types --------------------------------------------------------------------------------


def test_the_types_their_modules_and_countries() -> None:
    expected = {
        "au_abn": (abn, {"AU"}),
        "ca_bn": (bn, {"CA"}),
        "ch_vat": (ch_vat, {"CH"}),
        "gb_vat": (gb_vat, {"GB"}),
        "in_gst": (gstin, {"IN"}),
        "no_vat": (mva, {"NO"}),
        "us_ein": (ein, {"US"}),
    }
    for name, (module, countries) in expected.items():
        kind = TAX_ID_TYPES[name]
        assert kind.name == name
        assert kind.module is module
        assert kind.countries == countries
    assert TAX_ID_TYPES["eu_vat"].module is eu_vat
    assert set(TAX_ID_TYPES) == {*expected, "eu_vat"}


def test_eu_vat_is_for_the_27_member_states() -> None:
    countries = TAX_ID_TYPES["eu_vat"].countries
    assert len(countries) == 27
    assert {"AT", "DE", "FR", "GR", "IE", "NL", "CY", "HR"} <= countries
    assert not {"GB", "XI", "EL", "CH", "NO"} & countries
    assert countries <= set(COUNTRY_CODES)


def test_the_types_are_read_only() -> None:
    with pytest.raises(TypeError):
        TAX_ID_TYPES["xx_vat"] = TAX_ID_TYPES["eu_vat"]  # type: ignore[index]


# -- valid numbers ----------------------------------------------------------------------------


VALID = [
    ("eu_vat", "AT", "AT U13585627", "ATU13585627", "ATU13585627"),
    ("eu_vat", "BE", "BE 428759497", "BE0428759497", "BE0428759497"),
    ("eu_vat", "DE", "DE136695976", "DE136695976", "DE136695976"),
    ("eu_vat", "DE", "136695976", "DE136695976", "DE136695976"),  # prefix added
    ("eu_vat", "de", "de 136.695-976", "DE136695976", "DE136695976"),
    ("eu_vat", "FR", "Fr 40 303 265 045", "FR40303265045", "FR40303265045"),
    ("eu_vat", "FR", "40303265045", "FR40303265045", "FR40303265045"),
    # A French key may be letters, here those of Croatia's prefix: still French.
    ("eu_vat", "FR", "HR303265045", "FRHR303265045", "FRHR303265045"),
    ("eu_vat", "GR", "EL 094259216 ", "EL094259216", "EL094259216"),
    ("eu_vat", "GR", "094259216", "EL094259216", "EL094259216"),
    ("eu_vat", "GR", "gr094259216", "EL094259216", "EL094259216"),  # ISO code as prefix
    ("eu_vat", "NL", "NL4495445B01", "NL004495445B01", "NL004495445B01"),
    ("eu_vat", "NL", "004495445b01", "NL004495445B01", "NL004495445B01"),
    ("eu_vat", "ES", "ES B-58378431", "ESB58378431", "ESB58378431"),
    ("eu_vat", "CY", "CY-10259033P", "CY10259033P", "CY10259033P"),
    ("eu_vat", "MT", "MT 1167-9112", "MT11679112", "MT11679112"),
    ("gb_vat", "GB", "GB 980 7806 84", "980780684", "980 7806 84"),
    ("gb_vat", "GB", "gb980.7806-84", "980780684", "980 7806 84"),
    ("au_abn", "AU", "83 914 571 673", "83914571673", "83 914 571 673"),
    ("au_abn", "au", "51824753556", "51824753556", "51 824 753 556"),
    ("in_gst", "IN", "27AAPFU0939F1ZV", "27AAPFU0939F1ZV", "27AAPFU0939F1ZV"),
    ("in_gst", "IN", "27-aapfu-0939f1zv", "27AAPFU0939F1ZV", "27AAPFU0939F1ZV"),
    ("us_ein", "US", "91-1144442", "911144442", "91-1144442"),
    ("us_ein", "US", "042103594", "042103594", "04-2103594"),
    ("ca_bn", "CA", "12302 6635", "123026635", "123026635"),
    ("ca_bn", "CA", "123-026-635", "123026635", "123026635"),
    ("ca_bn", "CA", "12302 6635 RC 0001", "123026635RC0001", "123026635RC0001"),
    ("ch_vat", "CH", "CHE-107.787.577 IVA", "CHE107787577IVA", "CHE-107.787.577 IVA"),
    ("ch_vat", "ch", "che107787577mwst", "CHE107787577MWST", "CHE-107.787.577 MWST"),
    ("no_vat", "NO", "NO 995 525 828 MVA", "995525828MVA", "NO 995 525 828 MVA"),
    ("no_vat", "NO", "995525828mva", "995525828MVA", "NO 995 525 828 MVA"),
]


@pytest.mark.parametrize(("type", "country", "value", "stored", "display"), VALID)
def test_valid_numbers_are_stored_compact(
    type: str, country: str, value: str, stored: str, display: str
) -> None:
    expected = TaxId(type, country.upper(), stored, display)
    assert check_tax_id(type, country, value) == expected
    assert check_all(type, country, value) == (expected, [])
    # What is stored reads back as itself.
    assert check_tax_id(type, country, stored) == expected


def test_every_type_has_valid_and_invalid_numbers() -> None:
    assert {row[0] for row in VALID} == set(TAX_ID_TYPES)
    assert {row[0] for row in INVALID} == set(TAX_ID_TYPES)


def test_a_tax_id_is_frozen() -> None:
    tax_id = check_tax_id("gb_vat", "GB", "980780684")
    with pytest.raises(AttributeError):
        tax_id.value = "802311781"  # type: ignore[misc]


# -- invalid numbers --------------------------------------------------------------------------


INVALID = [
    ("eu_vat", "DE", "DE136695978", CHECKSUM),
    ("eu_vat", "DE", "136695978", CHECKSUM),
    ("eu_vat", "DE", "DE13669597", LENGTH),
    ("eu_vat", "DE", "1366959761", LENGTH),
    ("eu_vat", "FR", "84 323 140 391", CHECKSUM),
    ("eu_vat", "GR", "EL 123456781", CHECKSUM),
    ("eu_vat", "NL", "123456789B90", CHECKSUM),
    ("eu_vat", "DE", "DE13669597X", FORMAT),
    ("gb_vat", "GB", "802311781", CHECKSUM),
    ("gb_vat", "GB", "98078068", LENGTH),
    ("gb_vat", "GB", "98O780684", FORMAT),  # letter O for a zero
    ("gb_vat", "GB", "GD999", COMPONENT),
    ("au_abn", "AU", "99 999 999 999", CHECKSUM),
    ("au_abn", "AU", "8391457167", LENGTH),
    ("au_abn", "AU", "83914571A73", FORMAT),
    ("in_gst", "IN", "27AAPFU0939F1ZO", CHECKSUM),
    ("in_gst", "IN", "27AAPFU0939F1Z", LENGTH),
    ("in_gst", "IN", "369296450896540", FORMAT),
    ("in_gst", "IN", "27AAPFU0939F1AA", COMPONENT),
    ("us_ein", "US", "911-14-4442", FORMAT),  # dashes where an SSN has them
    ("us_ein", "US", "91-114444", FORMAT),  # EINs have no check digit: a format error
    ("us_ein", "US", "07-1144442", COMPONENT),  # no IRS campus issues 07
    ("ca_bn", "CA", "123456783", CHECKSUM),
    ("ca_bn", "CA", "1230266", LENGTH),
    ("ca_bn", "CA", "12345678Z", FORMAT),
    ("ca_bn", "CA", "123026635XX0001", COMPONENT),
    ("ca_bn", "CA", "123026635rc0001", COMPONENT),  # stdnum's ca.bn does not upper-case
    ("ch_vat", "CH", "CHE-107.787.578 IVA", CHECKSUM),
    ("ch_vat", "CH", "CHE-107.787.577", LENGTH),
    ("ch_vat", "CH", "CHE-107.787.577 VAT", COMPONENT),
    ("no_vat", "NO", "NO 995 525 829 MVA", CHECKSUM),
    ("no_vat", "NO", "99552582MVA", LENGTH),
    ("no_vat", "NO", "995525828", FORMAT),
]


@pytest.mark.parametrize(("type", "country", "value", "message"), INVALID)
def test_invalid_numbers_say_what_is_wrong(
    type: str, country: str, value: str, message: str
) -> None:
    with pytest.raises(TaxIdError, match=message) as caught:
        check_tax_id(type, country, value)
    assert caught.value.field == "value"
    assert str(caught.value).startswith(f"is not a valid {TAX_ID_TYPES[type].label}: ")
    assert isinstance(caught.value, ValueError)
    assert check_all(type, country, value) == (None, [("value", caught.value.message)])


@pytest.mark.parametrize(
    ("type", "value"),
    [
        # Each module strips only its own separators (stdnum's compact): refused, not guessed.
        ("us_ein", "91 1144442"),
        ("au_abn", "83-914-571-673"),
        ("no_vat", "995.525.828 MVA"),
    ],
)
def test_separators_a_module_does_not_strip_are_refused(type: str, value: str) -> None:
    country = next(iter(TAX_ID_TYPES[type].countries))
    with pytest.raises(TaxIdError, match=FORMAT):
        check_tax_id(type, country, value)


@pytest.mark.parametrize("value", ["", "   "])
def test_a_blank_value_is_refused(value: str) -> None:
    with pytest.raises(TaxIdError, match="must not be blank") as caught:
        check_tax_id("eu_vat", "DE", value)
    assert caught.value.field == "value"


# -- the EU prefix ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "value", "message"),
    [
        ("DE", "FR40303265045", "starts with FR, but VAT numbers of Germany start with DE"),
        ("FR", "DE136695976", "starts with DE, but VAT numbers of France start with FR"),
        ("GR", "DE136695976", "starts with DE, but VAT numbers of Greece start with EL"),
        ("AT", "EU372022452", "starts with EU, but VAT numbers of Austria start with AT"),
    ],
)
def test_an_eu_prefix_must_be_the_countrys(country: str, value: str, message: str) -> None:
    with pytest.raises(TaxIdError) as caught:
        check_tax_id("eu_vat", country, value)
    assert (caught.value.field, caught.value.message) == ("value", message)


# -- type and country -------------------------------------------------------------------------


@pytest.mark.parametrize("type", ["", "vat", "EU_VAT", "eu-vat", "uk_vat"])
def test_an_unknown_type_is_refused(type: str) -> None:
    with pytest.raises(TaxIdError) as caught:
        check_tax_id(type, "DE", "DE136695976")
    assert caught.value.field == "type"
    assert caught.value.message == (
        "must be one of au_abn, ca_bn, ch_vat, eu_vat, gb_vat, in_gst, no_vat, us_ein"
    )


@pytest.mark.parametrize(
    ("type", "country", "value", "message"),
    [
        (
            "eu_vat",
            "US",
            "DE136695976",
            "EU VAT numbers are issued in an EU member state, not in United States (US)",
        ),
        (
            "eu_vat",
            "GB",
            "GB980780684",
            "EU VAT numbers are issued in an EU member state, not in United Kingdom (GB)",
        ),
        (
            "gb_vat",
            "IE",
            "980780684",
            "UK VAT numbers are issued in United Kingdom (GB), not in Ireland (IE)",
        ),
        (
            "au_abn",
            "NZ",
            "83914571673",
            "Australian Business Numbers are issued in Australia (AU), not in New Zealand (NZ)",
        ),
        ("in_gst", "us", "27AAPFU0939F1ZV", "issued in India (IN), not in United States (US)"),
        ("us_ein", "CA", "911144442", "issued in United States (US), not in Canada (CA)"),
        ("ca_bn", "US", "123026635", "issued in Canada (CA), not in United States (US)"),
        ("ch_vat", "LI", "CHE107787577IVA", "issued in Switzerland (CH), not in Liechtenstein"),
        ("no_vat", "SE", "995525828MVA", "issued in Norway (NO), not in Sweden (SE)"),
    ],
)
def test_a_country_the_type_is_not_for_is_refused(
    type: str, country: str, value: str, message: str
) -> None:
    with pytest.raises(TaxIdError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        check_tax_id(type, country, value)
    assert e.value.field == "country"


@pytest.mark.parametrize("country", ["EL", "Greece", "GRC", ""])
def test_greece_is_gr_not_el(country: str) -> None:
    with pytest.raises(TaxIdError) as caught:
        check_tax_id("eu_vat", country, "EL094259216")
    assert caught.value.field == "country"
    assert check_tax_id("eu_vat", "GR", "EL094259216").value == "EL094259216"


# -- every wrong field at once ----------------------------------------------------------------


def test_check_all_reports_every_wrong_field() -> None:
    tax_id, errors = check_all("gb_vat", "FR", "802311781")
    assert tax_id is None
    assert [field for field, _ in errors] == ["country", "value"]
    assert CHECKSUM in errors[1][1]


def test_check_all_reports_type_and_country_and_cannot_judge_the_value() -> None:
    tax_id, errors = check_all("vat", "ZZZ", "802311781")
    assert tax_id is None
    assert errors == [
        ("type", "must be one of au_abn, ca_bn, ch_vat, eu_vat, gb_vat, in_gst, no_vat, us_ein"),
        ("country", "must be a two-letter ISO 3166-1 country code such as DE, not 'ZZZ'"),
    ]


def test_check_all_judges_an_eu_value_only_in_a_member_state() -> None:
    # Without an EU country there is no prefix to read the number by.
    assert check_all("eu_vat", "US", "garbage") == (
        None,
        [
            (
                "country",
                "EU VAT numbers are issued in an EU member state, not in United States (US)",
            )
        ],
    )
    assert check_all("eu_vat", "DE", "") == (None, [("value", "must not be blank")])


def test_check_all_with_a_bad_country_still_judges_a_national_value() -> None:
    tax_id, errors = check_all("no_vat", "", "995525828")
    assert tax_id is None
    assert [field for field, _ in errors] == ["country", "value"]
    assert FORMAT in errors[1][1]
