"""Phone numbers as people write them → the digits GoFax wants, or a reason why not.

Pure functions on top of `phonenumbers` (libphonenumber's metadata): this module decides only
what faxbridge adds to it — which spellings we accept from a mail address, how ambiguous
country-code-without-plus forms are read, and which numbers we refuse to spend money on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import (
    NumberParseException,
    PhoneNumberFormat,
    PhoneNumberType,
    ValidationResult,
    shortnumberinfo,
)

__all__ = ["NumberError", "PhoneNumber", "display_number", "is_valid_region", "parse_number"]


class NumberError(ValueError):
    """A number we will not send to; str(e) is a short reason fit for an SMTP reply or a notice."""


@dataclass(frozen=True)
class PhoneNumber:
    digits: str  # GoFax form: country code + national number, digits only: "61298765432"
    display: str  # international form for people: "+61 2 9876 5432"
    is_mobile: bool  # can receive SMS (MOBILE, or FIXED_LINE_OR_MOBILE where we cannot tell)
    region: str  # "AU", "US", ...; "001" for non-geographic numbers such as +800


# A mail local part can hold almost anything; we accept only what a person writes for a phone
# number, so that phonenumbers never gets to reinterpret letters (it maps vanity letters to
# digits and swallows "ext"/";ext=" suffixes) and we never dial something the sender did not see.
_ALLOWED = re.compile(r"\+?[0-9 ().\-]+")
_NOT_DIGIT = re.compile(r"[^0-9]")

# Longer than any real number with generous separators; stops pathological input early and keeps
# the reason quoted back to the sender short.
_MAX_INPUT_CHARS = 40

# Emergency codes are at most a few digits; only inputs this short are checked against other
# regions' emergency numbers (e.g. a visitor typing 911 in Australia).
_MAX_EMERGENCY_DIGITS = 6

# The only refused type. SHARED_COST is allowed on purpose: in AU it is exactly the 13/1300
# local-rate range, which businesses use for fax lines and which costs the caller little.
_PREMIUM_TYPES = frozenset({PhoneNumberType.PREMIUM_RATE})

# NANP and some other plans do not separate mobiles from landlines; refusing SMS to all of them
# would make SMS to the US/Canada impossible, so "may be mobile" counts as mobile.
_MOBILE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})


def is_valid_region(region: str) -> bool:
    """True for a two-letter region code phonenumbers has metadata for ("AU", "NZ", "US")."""
    # Exact case, like the config validator: phonenumbers itself rejects "au" as a default region.
    return region in phonenumbers.SUPPORTED_REGIONS


def parse_number(text: str, *, region: str = "AU", allow_premium: bool = False) -> PhoneNumber:
    """Read a number as written in a mail local part or by a person; raise NumberError if unusable.

    National forms are read in `region`. A form without '+' that is not a valid national number
    is retried as international ("61298765432", "14155550100", "0061298765432").
    """
    if not is_valid_region(region):
        raise NumberError(f"{region!r} is not a region code known to phonenumbers (e.g. 'AU')")
    shown = (text or "").strip()
    if not shown:
        raise NumberError("no phone number given")
    if len(shown) > _MAX_INPUT_CHARS:
        raise NumberError(f"'{shown[:20]}…' is too long to be a phone number")
    if not _ALLOWED.fullmatch(shown) or not _NOT_DIGIT.sub("", shown):
        raise NumberError(
            f"'{shown}' is not a phone number: only digits, spaces, + - . ( ) are allowed"
        )

    has_plus = shown.startswith("+")
    digits = _NOT_DIGIT.sub("", shown)

    # Emergency numbers first and unconditionally: allow_premium must never unlock them.
    if not has_plus and shortnumberinfo.is_emergency_number(digits, region):
        raise NumberError(_emergency_reason(shown))

    readings = _readings(digits, region, has_plus)
    number = next(
        (
            n
            for n in readings
            if isinstance(n, phonenumbers.PhoneNumber) and phonenumbers.is_valid_number(n)
        ),
        None,
    )
    if number is None:
        raise NumberError(_unusable_reason(shown, digits, region, has_plus, readings))

    kind = phonenumbers.number_type(number)
    if kind in _PREMIUM_TYPES and not allow_premium:
        raise NumberError(
            f"{shown} is a premium-rate number; set [numbers] allow_premium = true to allow"
        )

    return PhoneNumber(
        digits=f"{number.country_code}{phonenumbers.national_significant_number(number)}",
        display=phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL),
        is_mobile=kind in _MOBILE_TYPES,
        region=phonenumbers.region_code_for_number(number) or "",
    )


def display_number(digits: str | None) -> str:
    """GoFax digits → "+61 2 9876 5432" for notices; "withheld" when the caller id is missing."""
    raw = (digits or "").strip()
    if not raw:
        return "withheld"
    bare = raw.removeprefix("+")
    if not bare.isascii() or not bare.isdigit():
        # A caller-id label ("Anonymous", "Private") rather than a number: show it as given,
        # since "+Anonymous" would be nonsense.
        return raw
    try:
        number = phonenumbers.parse(f"+{bare}", None)
    except NumberParseException:
        return f"+{bare}"
    if not phonenumbers.is_valid_number(number):
        # format_number on an invalid number can regroup digits misleadingly; show them plain.
        return f"+{bare}"
    return phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)


# --- internals -----------------------------------------------------------------------------


def _parse(text: str, region: str) -> phonenumbers.PhoneNumber | NumberParseException:
    # The exception is kept, not raised: a failed reading may still explain why nothing fitted.
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException as exc:
        return exc


_Reading = phonenumbers.PhoneNumber | NumberParseException


def _readings(digits: str, region: str, has_plus: bool) -> list[_Reading]:
    """The interpretations of the input, most likely first."""
    if has_plus:
        return [_parse(f"+{digits}", region)]
    # National first: "0298765432" and also "61298765432" (phonenumbers strips a leading country
    # code of the default region itself) and the region's own IDD ("0011 1 415…" in AU).
    readings = [_parse(digits, region)]
    # Then as if the sender forgot the '+': "14155550100", "6421…".
    readings.append(_parse(f"+{digits}", region))
    # Then "00" as an international prefix even where the region's IDD differs (AU uses 0011,
    # yet "0061…" is what most of the world, and many Australians, write).
    if digits.startswith("00"):
        readings.append(_parse(f"+{digits[2:]}", region))
    return readings


def _emergency_reason(shown: str) -> str:
    return f"{shown} is an emergency number and cannot be faxed or texted"


def _unusable_reason(
    shown: str,
    digits: str,
    region: str,
    has_plus: bool,
    readings: list[_Reading],
) -> str:
    """The most specific reason we can give for input that is not a valid number."""
    if not has_plus:
        # Dialling these would reach emergency services (e.g. "0001234" starts with 000 in AU).
        if shortnumberinfo.connects_to_emergency_number(digits, region):
            return _emergency_reason(shown)
        local = readings[0]
        if isinstance(
            local, phonenumbers.PhoneNumber
        ) and shortnumberinfo.is_valid_short_number_for_region(local, region):
            return f"{shown} is a short service number in {region} and cannot be faxed or texted"
        if len(digits) <= _MAX_EMERGENCY_DIGITS and any(
            shortnumberinfo.is_emergency_number(digits, other)
            for other in shortnumberinfo.SUPPORTED_SHORT_REGIONS
        ):
            return _emergency_reason(shown)

    # Explain the reading the sender most plausibly meant: the only one when they wrote '+';
    # the generic "00" one when they wrote "00" that is not the region's own IDD; otherwise the
    # national one (which includes the region's own IDD, e.g. "0011 …" in AU).
    primary = readings[0]
    if not has_plus and digits.startswith("00") and not _used_idd(digits, region):
        primary = readings[-1]
    if isinstance(primary, NumberParseException):
        return _parse_failure_reason(shown, primary)

    where = _where(primary, region)
    match phonenumbers.is_possible_number_with_reason(primary):
        case ValidationResult.TOO_SHORT:
            return f"{shown} is too short for a phone number in {where}"
        case ValidationResult.TOO_LONG:
            return f"{shown} is too long for a phone number in {where}"
        case ValidationResult.INVALID_LENGTH:
            return f"{shown} has the wrong number of digits for a phone number in {where}"
        case ValidationResult.INVALID_COUNTRY_CODE:
            return f"{shown} does not start with a known country code"
        case ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
            return f"{shown} is missing its area code (a local number in {where})"
        case _:
            return f"{shown} is not a valid phone number in {where}"


def _used_idd(digits: str, region: str) -> bool:
    """Whether phonenumbers read the leading digits as `region`'s own international prefix."""
    # country_code_source is only filled in when the raw input is kept.
    try:
        number = phonenumbers.parse(digits, region, keep_raw_input=True)
    except NumberParseException:
        # e.g. "0011" alone: phonenumbers saw the IDD but nothing usable after it.
        return True
    return number.country_code_source == phonenumbers.CountryCodeSource.FROM_NUMBER_WITH_IDD


def _parse_failure_reason(shown: str, exc: NumberParseException) -> str:
    if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE:
        return f"{shown} does not start with a known country code"
    if exc.error_type == NumberParseException.TOO_LONG:
        return f"{shown} is too long to be a phone number"
    # TOO_SHORT_AFTER_IDD, TOO_SHORT_NSN, NOT_A_NUMBER: nothing (usable) after the prefix.
    return f"{shown} is too short to be a phone number"


def _where(number: phonenumbers.PhoneNumber, default_region: str) -> str:
    """The region to name in a message about `number`."""
    if number.country_code == phonenumbers.country_code_for_region(default_region):
        return default_region
    # The main region for shared country codes ("US" for +1, "GB" for +44): close enough for a
    # length complaint, and more readable than a list of territories.
    region = phonenumbers.region_code_for_country_code(number.country_code)
    if region in (phonenumbers.UNKNOWN_REGION, phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY):
        return f"+{number.country_code}"
    return region
