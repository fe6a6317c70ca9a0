"""NIK validation: valid and invalid tables, the century, the +40 for women."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_sim.residents import synthetic_resident
from wire.nik import InvalidNik, NikInfo, Sex, validate_nik

TODAY = dt.date(2026, 11, 27)


@pytest.mark.parametrize(
    ("nik", "region", "born", "sex"),
    [
        ("3171011708450001", "317101", dt.date(1945, 8, 17), Sex.MALE),
        ("3171015708450001", "317101", dt.date(1945, 8, 17), Sex.FEMALE),  # 17 + 40
        ("3171014501010001", "317101", dt.date(2001, 1, 5), Sex.FEMALE),  # stdnum says 1901
        ("3207150501010001", "320715", dt.date(2001, 1, 5), Sex.MALE),
        ("3273017112990042", "327301", dt.date(1999, 12, 31), Sex.FEMALE),  # day 31 + 40 = 71
        ("5101012902000001", "510101", dt.date(2000, 2, 29), Sex.MALE),  # leap day of 2000
        ("7208016902040001", "720801", dt.date(2004, 2, 29), Sex.FEMALE),
        ("1201012711260001", "120101", dt.date(2026, 11, 27), Sex.MALE),  # born today
        ("1201012811260001", "120101", dt.date(1926, 11, 28), Sex.MALE),  # tomorrow in 2026: so 1926
        ("3501010101300001", "350101", dt.date(1930, 1, 1), Sex.MALE),
        ("3501010101250001", "350101", dt.date(2025, 1, 1), Sex.MALE),
        ("7301010101079999", "730101", dt.date(2007, 1, 1), Sex.MALE),
    ],
)
def test_valid_niks(nik: str, region: str, born: dt.date, sex: Sex) -> None:
    assert validate_nik(nik, today=TODAY) == NikInfo(nik, region, born, sex)


@pytest.mark.parametrize(
    ("nik", "problem"),
    [
        ("317101170845000", "must be 16 digits, got 15"),
        ("31710117084500011", "must be 16 digits, got 17"),
        ("", "must be 16 digits, got 0"),
        ("317101170845000A", "non-digit 'A'"),
        ("3171 0117 0845 0001", "non-digit ' '"),
        ("3171-011708450001", "non-digit '-'"),
        ("３１７１０１１７０８４５０００１", "non-digit '３'"),  # full-width digits  # noqa: RUF001
        ("9971011708450001", "unknown region code 9971"),
        ("0071011708450001", "unknown region code 0071"),
        ("3100011708450001", "unknown region code 3100"),
        ("3171001708450001", "unknown region code 317100"),
        ("3171013102450001", "impossible birth date (day 31, month 02"),  # 31 Feb
        ("3171017102450001", "impossible birth date (day 31, month 02"),  # 31 Feb, a woman
        ("3171012902010001", "impossible birth date (day 29, month 02"),  # 2001 and 1901 not leap
        ("3171010013450001", "impossible birth date"),  # month 13
        ("3171010000450001", "impossible birth date"),  # day 0, month 0
        ("3171013501450001", "impossible birth date"),  # day 35
        ("3171014001450001", "impossible birth date"),  # day 40: neither a man nor a woman
        ("3171017201450001", "impossible birth date"),  # day 72 = woman, 32nd
    ],
)
def test_invalid_niks(nik: str, problem: str) -> None:
    with pytest.raises(InvalidNik) as info:
        validate_nik(nik, today=TODAY)
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("nik", "declared", "problem"),
    [
        ("1201012811260001", dt.date(2026, 11, 28), "is in the future"),
        ("3171014501270001", dt.date(2027, 1, 5), "is in the future"),
        ("3171014501010001", dt.date(1901, 1, 5), "more than 120 years ago"),
        ("3171014501010001", dt.date(2001, 1, 6), "does not match"),
        ("3171014501010001", dt.date(2011, 1, 5), "does not match"),
    ],
)
def test_declared_birth_date_checked(nik: str, declared: dt.date, problem: str) -> None:
    with pytest.raises(InvalidNik, match=problem):
        validate_nik(nik, today=TODAY, birth_date=declared)


def test_declared_birth_date_fixes_the_century() -> None:
    # Without the declared date, a date later this year reads as the previous century.
    assert validate_nik("1201012811260001", today=TODAY).birth_date == dt.date(1926, 11, 28)
    info = validate_nik("1201012811260001", today=dt.date(2027, 1, 1), birth_date=dt.date(1926, 11, 28))
    assert info.birth_date == dt.date(1926, 11, 28)


def test_the_2001_girl_is_not_125() -> None:
    info = validate_nik("3171014501010001", today=TODAY)
    assert (info.birth_date, info.sex) == (dt.date(2001, 1, 5), Sex.FEMALE)


def test_leap_day_only_in_a_leap_century() -> None:
    # 29 Feb 00: 2000 is a leap year, but a reader in 1999 would only have 1900 (not leap).
    assert validate_nik("5101012902000001", today=TODAY).birth_date == dt.date(2000, 2, 29)
    with pytest.raises(InvalidNik, match="in the future or more than 120"):
        validate_nik("5101012902000001", today=dt.date(1999, 6, 1))


def test_not_a_string() -> None:
    with pytest.raises(InvalidNik, match="expected a string"):
        validate_nik(3171011708450001)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10_000))
def test_every_synthetic_resident_has_a_valid_nik(seed: int) -> None:
    resident = synthetic_resident(seed)
    info = validate_nik(resident.nik, today=TODAY, birth_date=resident.birth_date)
    assert info.sex == resident.sex
    assert validate_nik(resident.nik, today=TODAY).birth_date == resident.birth_date


@given(st.text(max_size=20))
def test_random_text_is_valid_or_invalid_nik_never_another_error(text: str) -> None:
    with contextlib.suppress(InvalidNik):
        validate_nik(text, today=TODAY)
