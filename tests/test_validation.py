"""NHS number, UK postcode and date-of-birth checks."""

from __future__ import annotations

from datetime import date

import pytest

from casehub.services import validation


@pytest.mark.parametrize("value", ["9434765919", "943 476 5919", "943-476-5919", "4010232137"])
def test_valid_nhs_numbers(value):
    assert validation.is_valid_nhs_number(value)


@pytest.mark.parametrize(
    "value",
    [
        "9434765918",  # wrong check digit
        "943476591",  # nine digits
        "94347659190",  # eleven digits
        "94347659l9",  # a letter
        "",
        "1000000010",  # the first nine digits give check digit 10: no valid number
    ],
)
def test_invalid_nhs_numbers(value):
    assert not validation.is_valid_nhs_number(value)


def test_nhs_check_digit():
    assert validation.nhs_check_digit("943476591") == 9
    assert validation.nhs_check_digit("100000001") is None


def test_nhs_number_digits_drops_separators():
    assert validation.nhs_number_digits(" 943 476-5919 ") == "9434765919"
    assert validation.nhs_number_digits("943.476.5919") is None


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("NG1 5FS", "NG1 5FS"),
        ("ng15fs", "NG1 5FS"),
        ("  le1   6tp ", "LE1 6TP"),
        ("SW1A 1AA", "SW1A 1AA"),
        ("w1a0ax", "W1A 0AX"),
        ("M1 1AE", "M1 1AE"),
        ("B33 8TH", "B33 8TH"),
        ("DN55 1PT", "DN55 1PT"),
        ("EC1A 1BB", "EC1A 1BB"),
        ("GIR 0AA", "GIR 0AA"),
    ],
)
def test_valid_postcodes_are_normalised(raw, normalised):
    assert validation.normalise_postcode(raw) == normalised


@pytest.mark.parametrize(
    "raw",
    [
        "QW1 1AA",  # Q never starts a postcode
        "NG1 5CS",  # C is not used in the inward code
        "NG1",  # outward code only
        "12345",
        "SW1A 1A",
        "NG1 5FSX",
        "",
    ],
)
def test_invalid_postcodes(raw):
    assert validation.normalise_postcode(raw) is None


TODAY = date(2026, 6, 15)


@pytest.mark.parametrize(
    ("born", "age"),
    [
        (date(2010, 6, 15), 16),
        (date(2010, 6, 16), 15),
        (date(2000, 6, 14), 26),
        (date(2008, 2, 29), 18),
    ],
)
def test_age_on(born, age):
    assert validation.age_on(born, TODAY) == age


def test_leap_day_birthday_is_reached_on_the_first_of_march():
    assert validation.age_on(date(2008, 2, 29), date(2026, 2, 28)) == 17
    assert validation.age_on(date(2008, 2, 29), date(2026, 3, 1)) == 18


@pytest.mark.parametrize(
    ("born", "problem"),
    [
        (TODAY, None),
        (date(2000, 6, 16), None),  # 25 until tomorrow
        (date(2000, 6, 15), "The subject must be under 26."),  # 26 today
        (date(1990, 1, 1), "The subject must be under 26."),
        (date(2026, 6, 16), "Cannot be in the future."),
    ],
)
def test_date_of_birth_problem(born, problem):
    assert validation.date_of_birth_problem(born, TODAY) == problem


@pytest.mark.parametrize(
    ("year", "problem"),
    [
        (2026, None),
        (2000, None),  # born late in 2000: still 25 today
        (1999, "The subject must be under 26."),
        (2027, "Cannot be in the future."),
    ],
)
def test_estimated_birth_year_problem(year, problem):
    assert validation.estimated_birth_year_problem(year, TODAY) == problem
