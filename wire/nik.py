"""NIK (Nomor Induk Kependudukan) validation: structure, region, birth date and sex.

A NIK is 16 digits ``PPKKCC DDMMYY SSSS``: province, regency/city and district of first
registration; the birth date with 40 added to the day for women; a serial. There is no
check digit. python-stdnum's ``stdnum.id.nik`` checks the digits, the length and the
province against its bundled table; this module adds what it leaves out:

- the century: stdnum tries 19xx first (a girl born 5 Jan 2001 comes back as 1901). We
  take the most recent century in which the date exists and is not after ``today``,
  and refuse it when that would make the holder older than ``MAX_AGE_YEARS``;
- when the full birth date is known (the resident's documents), it must agree with the
  NIK's DDMMYY and must not lie in the future;
- regency/city or district ``00`` (no such code is ever issued).

Error tree::

    ValueError
     +-- InvalidNik
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from stdnum import numdb
from stdnum.exceptions import ValidationError
from stdnum.id import nik as stdnum_nik

MAX_AGE_YEARS = 120
# "Today" is never taken as earlier than this: a Pi has no RTC, and one that boots without
# network may read 1970, which would put every birth date "in the future".
EARLIEST_TODAY = dt.date(2025, 1, 1)
FEMALE_DAY_OFFSET = 40
NIK_LENGTH = 16


class Sex(StrEnum):
    """Sex as encoded in the NIK (and on the KTP): M or F."""

    MALE = "M"
    FEMALE = "F"


class InvalidNik(ValueError):
    """The NIK is not a valid Indonesian NIK; the message says exactly what is wrong."""

    def __init__(self, nik: str, problem: str) -> None:
        super().__init__(f"invalid NIK {nik!r}: {problem}")
        self.nik = nik
        self.problem = problem


@dataclass(frozen=True, slots=True)
class NikInfo:
    """What a valid NIK says about its holder."""

    nik: str
    region_code: str  # PPKKCC, district of first registration
    birth_date: dt.date
    sex: Sex


def validate_nik(nik: str, today: dt.date | None = None, *, birth_date: dt.date | None = None) -> NikInfo:
    """Validate a NIK and decode it; ``birth_date`` (from documents) fixes the century.

    ``today`` defaults to the system date, but never earlier than ``EARLIEST_TODAY``.

    :raises InvalidNik: wrong length, non-digit, unknown region code, impossible or future date.
    """
    today = today or max(_system_date(), EARLIEST_TODAY)
    if not isinstance(nik, str):
        raise InvalidNik(repr(nik), f"expected a string of {NIK_LENGTH} digits, got {type(nik).__name__}")
    bad = [c for c in nik if not ("0" <= c <= "9")]
    if bad:
        raise InvalidNik(nik, f"must be digits only, found non-digit {bad[0]!r}")
    if len(nik) != NIK_LENGTH:
        raise InvalidNik(nik, f"must be {NIK_LENGTH} digits, got {len(nik)}")
    _check_region(nik)
    day_field, month, yy = int(nik[6:8]), int(nik[8:10]), int(nik[10:12])
    sex = Sex.FEMALE if day_field > FEMALE_DAY_OFFSET else Sex.MALE
    day = day_field - FEMALE_DAY_OFFSET if sex is Sex.FEMALE else day_field
    if birth_date is not None:
        born = _check_declared(nik, birth_date, day, month, yy, today)
    else:
        born = _pick_century(nik, day, month, yy, today)
    # stdnum's own checks (digits, length, a date in 19xx or 20xx, province) as a second opinion.
    try:
        stdnum_nik.validate(nik)
    except ValidationError as exc:
        raise InvalidNik(nik, f"rejected by python-stdnum: {exc}") from exc
    return NikInfo(nik=nik, region_code=nik[:6], birth_date=born, sex=sex)


def _system_date() -> dt.date:
    return dt.date.today()


def _check_region(nik: str) -> None:
    code = nik[:4]
    province = numdb.get("id/loc").info(code)[0][1]
    if not province:
        raise InvalidNik(nik, f"unknown region code {code} (province {code[:2]} is not in the table)")
    if nik[2:4] == "00":
        raise InvalidNik(nik, f"unknown region code {code} (regency/city 00 does not exist)")
    if nik[4:6] == "00":
        raise InvalidNik(nik, f"unknown region code {nik[:6]} (district 00 does not exist)")


def _date_text(day: int, month: int, yy: int) -> str:
    return f"day {day:02d}, month {month:02d}, year ..{yy:02d}"


def _pick_century(nik: str, day: int, month: int, yy: int, today: dt.date) -> dt.date:
    latest = today.year - (today.year - yy) % 100  # the latest year <= today.year ending in yy
    candidates = []
    for year in (latest + 100, latest, latest - 100, latest - 200):
        try:
            candidates.append(dt.date(year, month, day))
        except ValueError:
            continue  # 29 Feb of a year that is not a leap year
    if not candidates:
        raise InvalidNik(nik, f"impossible birth date ({_date_text(day, month, yy)})")
    for born in candidates:  # most recent first
        if born <= today and _age(born, today) <= MAX_AGE_YEARS:
            return born
    raise InvalidNik(
        nik,
        f"birth date {_date_text(day, month, yy)} is in the future or more than {MAX_AGE_YEARS} years ago",
    )


def _check_declared(nik: str, born: dt.date, day: int, month: int, yy: int, today: dt.date) -> dt.date:
    try:
        dt.date(2000, month, day)  # 2000 is a leap year: the widest calendar
    except ValueError:
        raise InvalidNik(nik, f"impossible birth date ({_date_text(day, month, yy)})") from None
    if (born.day, born.month, born.year % 100) != (day, month, yy):
        raise InvalidNik(
            nik, f"birth date {born.isoformat()} does not match the NIK's ({_date_text(day, month, yy)})"
        )
    if born > today:
        raise InvalidNik(
            nik, f"birth date {born.isoformat()} is in the future (today is {today.isoformat()})"
        )
    if _age(born, today) > MAX_AGE_YEARS:
        raise InvalidNik(nik, f"birth date {born.isoformat()} is more than {MAX_AGE_YEARS} years ago")
    return born


def _age(born: dt.date, today: dt.date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))
