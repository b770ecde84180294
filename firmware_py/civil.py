"""Civil-calendar arithmetic on Unix seconds, integers only (MicroPython has no datetime).

Rules:
  C1. Dates are proleptic Gregorian; days are counted from 1970-01-01 with Howard Hinnant's
      days_from_civil / civil_from_days algorithms (http://howardhinnant.github.io/date_algorithms.html),
      exact for every year representable here, negative days included.
  C2. A local civil time is Unix seconds shifted by a fixed offset `tz` (seconds east of UTC).
      Billing uses BILLING_TZ = UTC+8 (Asia/Shanghai has no daylight saving time), so
      "3 months after claiming" and "one year from activation" are counted on the customer's
      calendar, not UTC's.
  C3. add_months keeps the local time of day and the day of month; when the target month is
      shorter, the day is clamped to its last day (Jan 31 + 1 month = Feb 28/29; Feb 29 + 12
      months = Feb 28). Adding 12 months is "one year".
  C4. Intervals are half-open: a thing valid from `start` for n months is valid at t when
      start <= t < add_months(start, n).
"""
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

BILLING_TZ = const(28800)   # UTC+8, seconds east of UTC
_DAY = const(86400)


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of the civil date y-m-d (m 1..12, d 1..31)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = (m + 9) % 12            # March = 0
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z: int) -> tuple:
    """(y, m, d) of the day z days after 1970-01-01."""
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + (m <= 2), m, d)


def days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def to_unix(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0, tz: int = BILLING_TZ) -> int:
    """Unix seconds of the local civil time y-m-d hh:mm:ss at offset tz."""
    return days_from_civil(y, m, d) * _DAY + hh * 3600 + mm * 60 + ss - tz


def from_unix(t: int, tz: int = BILLING_TZ) -> tuple:
    """(y, m, d, hh, mm, ss) of Unix seconds t as local civil time at offset tz."""
    local = t + tz
    days = local // _DAY
    secs = local - days * _DAY
    y, m, d = civil_from_days(days)
    return (y, m, d, secs // 3600, (secs // 60) % 60, secs % 60)


def add_months(t: int, n: int, tz: int = BILLING_TZ) -> int:
    """t plus n calendar months (n may be negative), rule C3."""
    if not isinstance(t, int) or not isinstance(n, int):
        raise ValueError("add_months: integer seconds and months required")
    local = t + tz
    days = local // _DAY
    secs = local - days * _DAY
    y, m, d = civil_from_days(days)
    k = y * 12 + (m - 1) + n
    y2 = k // 12
    m2 = k - y2 * 12 + 1
    dim = days_in_month(y2, m2)
    return days_from_civil(y2, m2, d if d <= dim else dim) * _DAY + secs - tz


def iso(t: int, tz: int = BILLING_TZ) -> str:
    """'YYYY-MM-DDTHH:MM:SS+HH:MM' of t at offset tz (for messages and vectors)."""
    y, m, d, hh, mi, ss = from_unix(t, tz)
    sign = "+" if tz >= 0 else "-"
    a = tz if tz >= 0 else -tz
    return "%04d-%02d-%02dT%02d:%02d:%02d%s%02d:%02d" % (y, m, d, hh, mi, ss, sign, a // 3600, (a // 60) % 60)


def parse_iso(s: str, tz: int = BILLING_TZ) -> int:
    """Unix seconds of 'YYYY-MM-DD[THH:MM[:SS]][Z|+HH:MM|-HH:MM]'; no offset means tz.

    Raises ValueError naming the text when it is not of that form or a field is out of range.
    """
    try:
        date, _, rest = s.replace(" ", "T").partition("T")
        ys, ms, ds = date.split("-")
        y, m, d = int(ys), int(ms), int(ds)
        off = tz
        if rest.endswith("Z"):
            off, rest = 0, rest[:-1]
        elif len(rest) > 6 and rest[-6] in "+-" and rest[-3] == ":":
            a = int(rest[-5:-3]) * 3600 + int(rest[-2:]) * 60
            off, rest = (a if rest[-6] == "+" else -a), rest[:-6]
        parts = [int(p) for p in rest.split(":")] if rest else []
    except (ValueError, IndexError):
        raise ValueError("not an ISO date/time: %r" % (s,))
    if len(parts) == 2:
        parts.append(0)
    if (len(parts) not in (0, 3) or len(ys) != 4 or not 1 <= m <= 12 or not 1 <= d <= days_in_month(y, m)
            or (parts and not (0 <= parts[0] < 24 and 0 <= parts[1] < 60 and 0 <= parts[2] < 60))):
        raise ValueError("not an ISO date/time: %r" % (s,))
    hh, mi, ss = parts if parts else (0, 0, 0)
    return to_unix(y, m, d, hh, mi, ss, off)
