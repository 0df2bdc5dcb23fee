"""bridge.numbers: what people write → GoFax digits, and what we refuse (and say why).

Every number here was checked against the phonenumbers metadata; US 555-01xx numbers are
fictional but valid there, which is why they can stand in for real ones.
"""

from __future__ import annotations

import pytest

from bridge.numbers import NumberError, PhoneNumber, display_number, is_valid_region, parse_number

SYDNEY = "61298765432"

# (input, region, expected digits)
ACCEPTED: list[tuple[str, str, str]] = [
    # The same Sydney landline in every form the brief names.
    ("0298765432", "AU", SYDNEY),
    ("02 9876 5432", "AU", SYDNEY),
    ("(02) 9876-5432", "AU", SYDNEY),
    ("02.9876.5432", "AU", SYDNEY),
    ("02-9876-5432", "AU", SYDNEY),
    ("+61298765432", "AU", SYDNEY),
    ("+61 2 9876 5432", "AU", SYDNEY),
    ("+61 (0)2 9876 5432", "AU", SYDNEY),
    ("+610298765432", "AU", SYDNEY),
    ("61298765432", "AU", SYDNEY),
    ("61 2 9876 5432", "AU", SYDNEY),
    ("0061298765432", "AU", SYDNEY),
    ("00 61 2 9876 5432", "AU", SYDNEY),
    ("0011 61 2 9876 5432", "AU", SYDNEY),
    ("  0298765432  ", "AU", SYDNEY),
    # Other Australian areas, mobiles and non-geographic ranges that are allowed.
    ("(03) 9876 5432", "AU", "61398765432"),
    ("07 3876 5432", "AU", "61738765432"),
    ("08 9234 5678", "AU", "61892345678"),
    ("08 8234 5678", "AU", "61882345678"),
    ("02 6234 5678", "AU", "61262345678"),
    ("0412 345 678", "AU", "61412345678"),
    ("+61 412 345 678", "AU", "61412345678"),
    ("61412345678", "AU", "61412345678"),
    ("1800 123 456", "AU", "611800123456"),
    ("1-800-123-456", "AU", "611800123456"),
    ("1300 123 456", "AU", "611300123456"),
    ("13 12 34", "AU", "61131234"),
    # North America from Australia: with '+', with AU's 0011, without '+'.
    ("+1 415 555 0100", "AU", "14155550100"),
    ("+1 (212) 555-0123", "AU", "12125550123"),
    ("0011 1 415 555 0100", "AU", "14155550100"),
    ("14155550100", "AU", "14155550100"),
    ("+1 613 555 0123", "AU", "16135550123"),
    # New Zealand.
    ("+64 9 302 1234", "AU", "6493021234"),
    ("+64 21 123 4567", "AU", "64211234567"),
    ("6421 123 4567", "AU", "64211234567"),
    ("0064 21 123 4567", "AU", "64211234567"),
    ("0011 64 9 302 1234", "AU", "6493021234"),
    # United Kingdom.
    ("+44 20 7123 4567", "AU", "442071234567"),
    ("+44 (0)20 7123 4567", "AU", "442071234567"),
    ("0044 20 7123 4567", "AU", "442071234567"),
    ("447912345678", "AU", "447912345678"),
    # Region override: national forms of other countries.
    ("415 555 0100", "US", "14155550100"),
    ("(415) 555-0100", "US", "14155550100"),
    ("011 61 2 9876 5432", "US", SYDNEY),
    ("0061298765432", "US", SYDNEY),
    ("09 302 1234", "NZ", "6493021234"),
    ("021 123 4567", "NZ", "64211234567"),
    ("020 7123 4567", "GB", "442071234567"),
    ("07912 345678", "GB", "447912345678"),
    # A non-geographic number (UIFN freephone).
    ("+800 1234 5678", "AU", "80012345678"),
]


@pytest.mark.parametrize(("text", "region", "digits"), ACCEPTED)
def test_accepted_numbers_normalise_to_gofax_digits(text: str, region: str, digits: str) -> None:
    assert parse_number(text, region=region).digits == digits


@pytest.mark.parametrize(("text", "region", "digits"), ACCEPTED)
def test_gofax_digits_read_back_as_the_same_number(text: str, region: str, digits: str) -> None:
    # Stored digits are re-parsed later (routes, replies); with '+' they must be stable.
    number = parse_number(text, region=region)
    assert parse_number(f"+{number.digits}", region=region) == number


# (input, region, full expected result) for the fields beyond digits.
DETAILED: list[tuple[str, str, PhoneNumber]] = [
    ("0298765432", "AU", PhoneNumber(SYDNEY, "+61 2 9876 5432", False, "AU")),
    ("0412 345 678", "AU", PhoneNumber("61412345678", "+61 412 345 678", True, "AU")),
    ("1800 123 456", "AU", PhoneNumber("611800123456", "+61 1800 123 456", False, "AU")),
    # NANP does not tell mobiles from landlines: counted as mobile so SMS to the US works.
    ("+1 415 555 0100", "AU", PhoneNumber("14155550100", "+1 415-555-0100", True, "US")),
    ("+1 613 555 0123", "AU", PhoneNumber("16135550123", "+1 613-555-0123", True, "CA")),
    ("+64 9 302 1234", "AU", PhoneNumber("6493021234", "+64 9 302 1234", False, "NZ")),
    ("+64 21 123 4567", "AU", PhoneNumber("64211234567", "+64 21 123 4567", True, "NZ")),
    ("+44 20 7123 4567", "AU", PhoneNumber("442071234567", "+44 20 7123 4567", False, "GB")),
    ("07912 345678", "GB", PhoneNumber("447912345678", "+44 7912 345678", True, "GB")),
    ("+800 1234 5678", "AU", PhoneNumber("80012345678", "+800 1234 5678", False, "001")),
]


@pytest.mark.parametrize(("text", "region", "expected"), DETAILED)
def test_display_mobile_and_region(text: str, region: str, expected: PhoneNumber) -> None:
    assert parse_number(text, region=region) == expected


def test_default_region_is_australia() -> None:
    assert parse_number("02 9876 5432").region == "AU"
    assert parse_number("415 555 0100", region="US").digits == "14155550100"
    # Read in AU, a US national number without its country code is not a number.
    with pytest.raises(NumberError):
        parse_number("415 555 0100")


# (input, region, words the reason must contain)
REFUSED: list[tuple[str, str, tuple[str, ...]]] = [
    # Not made of phone-number characters: never handed to phonenumbers, which would otherwise
    # turn letters into digits or drop an extension silently.
    ("abc", "AU", ("'abc' is not a phone number", "only digits")),
    ("1300 FLOWERS", "AU", ("not a phone number",)),
    ("02 9876 5432#", "AU", ("not a phone number",)),
    ("*123", "AU", ("not a phone number",)),
    ("0298765432;ext=12", "AU", ("not a phone number",)),
    ("0298765432x12", "AU", ("not a phone number",)),
    ("++61298765432", "AU", ("not a phone number",)),
    ("61298765432+", "AU", ("not a phone number",)),
    ("+", "AU", ("not a phone number",)),
    ("０２９８７６５４３２", "AU", ("not a phone number",)),  # fullwidth digits
    ("", "AU", ("no phone number",)),
    ("   ", "AU", ("no phone number",)),
    ("0" * 41, "AU", ("too long",)),
    # Wrong length or not a number anywhere.
    ("0298", "AU", ("0298 is too short for a phone number in AU",)),
    ("+61 2 98", "AU", ("too short", "AU")),
    ("+1 415 555", "AU", ("too short", "US")),
    ("0011", "AU", ("too short",)),
    ("00", "AU", ("too short",)),
    ("+61 2 9876 5432 1234 5678", "AU", ("too long",)),
    ("029876543210", "AU", ("not a valid phone number in AU",)),
    ("4155550100", "AU", ("not a valid phone number in AU",)),
    ("0298765432", "US", ("not a valid phone number in US",)),
    ("+999 123 456", "AU", ("country code",)),
    ("00 999 123 456", "AU", ("country code",)),
    ("004420712", "AU", ("missing its area code", "GB")),
    # Emergency numbers, in the default region, dialled as a prefix, and from elsewhere.
    ("000", "AU", ("000 is an emergency number",)),
    ("112", "AU", ("emergency",)),
    ("106", "AU", ("emergency",)),
    ("911", "AU", ("emergency",)),
    ("911", "US", ("emergency",)),
    ("999", "GB", ("emergency",)),
    ("111", "NZ", ("emergency",)),
    ("000 1234", "AU", ("emergency",)),
    # Short service codes: no international form GoFax could dial.
    ("1223", "AU", ("short service number",)),
    ("19 12 34", "AU", ("short service number",)),
    # Premium rate.
    ("1900 123 456", "AU", ("1900 123 456 is a premium-rate number", "allow_premium = true")),
    ("+61 1900 123 456", "AU", ("premium-rate",)),
    ("+1 900 555 0123", "AU", ("premium-rate",)),
    ("+44 909 879 0000", "AU", ("premium-rate",)),
    ("+64 900 12345", "AU", ("premium-rate",)),
    # Region must be a real, upper-case region code.
    ("0298765432", "ZZ", ("'ZZ' is not a region code",)),
    ("0298765432", "au", ("'au' is not a region code",)),
]


@pytest.mark.parametrize(("text", "region", "words"), REFUSED)
def test_refused_with_a_reason(text: str, region: str, words: tuple[str, ...]) -> None:
    with pytest.raises(NumberError) as caught:
        parse_number(text, region=region)
    for word in words:
        assert word in str(caught.value)


def test_number_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="emergency"):
        parse_number("000")


@pytest.mark.parametrize(
    ("text", "digits"),
    [("1900 123 456", "611900123456"), ("+1 900 555 0123", "19005550123")],
)
def test_allow_premium_unlocks_premium_rate(text: str, digits: str) -> None:
    assert parse_number(text, allow_premium=True).digits == digits


@pytest.mark.parametrize(("text", "region"), [("000", "AU"), ("112", "AU"), ("911", "US")])
def test_allow_premium_never_unlocks_emergency_numbers(text: str, region: str) -> None:
    with pytest.raises(NumberError, match="emergency"):
        parse_number(text, region=region, allow_premium=True)


def test_local_rate_and_toll_free_are_not_premium() -> None:
    for text in ("13 12 34", "1300 123 456", "1800 123 456"):
        assert parse_number(text).digits.startswith("611")


@pytest.mark.parametrize(
    ("digits", "shown"),
    [
        (SYDNEY, "+61 2 9876 5432"),
        ("61412345678", "+61 412 345 678"),
        ("611800123456", "+61 1800 123 456"),
        ("14155550100", "+1 415-555-0100"),
        ("447912345678", "+44 7912 345678"),
        ("6493021234", "+64 9 302 1234"),
        ("+61298765432", "+61 2 9876 5432"),  # tolerate a '+' that slipped through
        (" 61298765432 ", "+61 2 9876 5432"),
        # Unparseable or invalid: shown as plain international digits, never regrouped.
        ("123", "+123"),
        ("6129876543210", "+6129876543210"),
        ("999123456", "+999123456"),
        # Missing caller id.
        ("", "withheld"),
        ("   ", "withheld"),
        (None, "withheld"),
        # A caller-id label rather than digits is shown as it came.
        ("Anonymous", "Anonymous"),
    ],
)
def test_display_number(digits: str | None, shown: str) -> None:
    assert display_number(digits) == shown


@pytest.mark.parametrize(
    ("region", "valid"),
    [
        ("AU", True),
        ("NZ", True),
        ("US", True),
        ("GB", True),
        ("au", False),  # config keys are exact; phonenumbers itself rejects lower case
        ("UK", False),  # the ISO code is GB
        ("ZZ", False),
        ("001", False),  # non-geographic numbers have no national form to default to
        ("", False),
        ("AUS", False),
    ],
)
def test_is_valid_region(region: str, valid: bool) -> None:
    assert is_valid_region(region) is valid
