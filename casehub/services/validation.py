"""Checks on a child's identifying details: NHS number, UK postcode, date and year of birth."""

from __future__ import annotations

import re
from datetime import date

# The service is for children and young people: care leavers are supported up to 25.
MAX_AGE = 25

_NHS_SEPARATORS = re.compile(r"[\s-]")
_NHS_DIGITS = re.compile(r"^[0-9]{10}$")

# The UK postcode formats (A9 9AA, A99 9AA, AA9 9AA, AA99 9AA, A9A 9AA, AA9A 9AA) with the
# letters Royal Mail never uses in each position, plus the one historic exception GIR 0AA.
_OUTWARD = (
    r"(?:[A-PR-UWYZ][0-9]{1,2}"
    r"|[A-PR-UWYZ][A-HK-Y][0-9]{1,2}"
    r"|[A-PR-UWYZ][0-9][A-HJKPSTUW]"
    r"|[A-PR-UWYZ][A-HK-Y][0-9][ABEHMNPRVWXY])"
)
_INWARD = r"[0-9][ABD-HJLNP-UW-Z]{2}"
_POSTCODE = re.compile(rf"^(?:{_OUTWARD}{_INWARD}|GIR0AA)$")


def nhs_number_digits(value: str) -> str | None:
    """The ten digits of an NHS number written with or without spaces or hyphens, or None."""
    digits = _NHS_SEPARATORS.sub("", value)
    return digits if _NHS_DIGITS.match(digits) else None


def nhs_check_digit(first_nine: str) -> int | None:
    """The modulus-11 check digit for nine digits; None when no valid number can end them."""
    weights = range(10, 1, -1)
    total = sum(int(digit) * weight for digit, weight in zip(first_nine, weights, strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid_nhs_number(value: str) -> bool:
    digits = nhs_number_digits(value)
    return digits is not None and nhs_check_digit(digits[:9]) == int(digits[9])


def normalise_postcode(value: str) -> str | None:
    """A valid UK postcode in upper case with one space before the inward code, or None."""
    compact = "".join(value.split()).upper()
    if not _POSTCODE.match(compact):
        return None
    return f"{compact[:-3]} {compact[-3:]}"


def age_on(born: date, today: date) -> int:
    """Whole years completed on `today` (someone born on 29 February ages on 1 March)."""
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def date_of_birth_problem(born: date, today: date) -> str | None:
    if born > today:
        return "Cannot be in the future."
    if age_on(born, today) > MAX_AGE:
        return f"The subject must be under {MAX_AGE + 1}."
    return None


def estimated_birth_year_problem(year: int, today: date) -> str | None:
    """Someone born in year Y is at most (today.year - Y) years old, so Y ≥ today.year - 26
    admits everyone under 26."""
    if year > today.year:
        return "Cannot be in the future."
    if year < today.year - (MAX_AGE + 1):
        return f"The subject must be under {MAX_AGE + 1}."
    return None
