"""Business hours, quiet hours, public holidays and closures, in the calendar's zone.

Contact rules talk in local time ("we call 08:00-20:00 London time, never on a bank
holiday"), so every check converts the instant to the calendar's time zone with
zoneinfo; DST changes and zone boundaries then take care of themselves.

>>> cal = Calendar("cc", "Europe/London", {0: [(480, 1200)]}, quiet=[(1260, 480)])
>>> def ms(s): return int(dt.datetime.fromisoformat(s).timestamp() * 1000)
>>> cal.is_open(ms("2026-11-23T09:00+00:00")), cal.is_open(ms("2026-11-23T07:59+00:00"))
(True, False)
>>> cal.is_open(ms("2026-06-22T07:30+00:00"))  # 08:30 in London: summer time
True
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = ["Calendar"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@lru_cache(maxsize=64)
def _holidays(country: str, subdiv: str | None, year: int) -> frozenset[dt.date]:
    import holidays

    return frozenset(holidays.country_holidays(country, subdiv=subdiv, years=year).keys())


@dataclass(frozen=True)
class Calendar:
    """Opening hours as minutes after local midnight per weekday (0 = Monday)."""

    name: str
    timezone: str
    hours: dict[int, list[tuple[int, int]]]
    quiet: list[tuple[int, int]] = field(default_factory=list)  # may wrap midnight
    country: str | None = None
    subdiv: str | None = None
    closed: frozenset[dt.date] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local(self, now_ms: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(now_ms / 1000, tz=self.zone)

    def day_key(self, now_ms: int) -> str:
        """The local date, for daily caps that follow the customer's day."""
        return self.local(now_ms).date().isoformat()

    def is_holiday(self, day: dt.date) -> bool:
        if day in self.closed:
            return True
        return bool(self.country) and day in _holidays(self.country or "", self.subdiv, day.year)

    def in_quiet_hours(self, now_ms: int) -> bool:
        t = self.local(now_ms)
        minute = t.hour * 60 + t.minute
        for start, end in self.quiet:
            if (start <= minute < end) if start < end else (minute >= start or minute < end):
                return True
        return False

    def is_open(self, now_ms: int) -> bool:
        t = self.local(now_ms)
        if self.is_holiday(t.date()) or self.in_quiet_hours(now_ms):
            return False
        minute = t.hour * 60 + t.minute
        return any(start <= minute < end for start, end in self.hours.get(t.weekday(), []))

    def next_open(self, now_ms: int, horizon_days: int = 14) -> int | None:
        """The next instant (ms) the calendar is open, scanning in 15-minute steps."""
        step = 15 * 60_000
        t = now_ms - now_ms % step + step
        for _ in range(horizon_days * 96):
            if self.is_open(t):
                return t
            t += step
        return None
