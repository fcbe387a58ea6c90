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
from functools import cached_property, lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo

__all__ = ["Calendar"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EPOCH = dt.datetime(1970, 1, 1)  # naive: local wall-clock times as ms since it
_MS = dt.timedelta(milliseconds=1)


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
        return self._quiet(t.hour * 60 + t.minute)

    def _quiet(self, minute: int) -> bool:
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
        """The first quarter-hour instant (ms) after `now_ms` at which the calendar is
        open, within `horizon_days`; None if it stays closed that long.

        Computed from the hours rather than by trying every quarter hour (up to 1,344
        `is_open` calls, 0.5 ms on the loop, for a calendar closed over a long weekend):
        from a closed instant it jumps to the first quarter hour whose local time is at
        or after the next open minute (hours minus quiet hours, holidays and closures
        skipped), since every quarter hour before it is closed. A jump covers at most a
        day and never crosses a UTC-offset change: at a DST change it stops at the first
        quarter hour under the new offset and looks again, so a wall-clock hour that is
        skipped or repeated is handled as `is_open` sees it. The answers are those of the
        walk (tests/test_decisions.py compares them across DST changes and holidays).
        """
        step = 15 * 60_000
        t = now_ms - now_ms % step + step
        end = t + horizon_days * 96 * step  # the walk tried t, t + step, ... before end
        zone = self.zone
        while t < end:
            if self.is_open(t):
                return t
            local = dt.datetime.fromtimestamp(t / 1000, tz=zone)
            offset = local.utcoffset()
            wall = self._next_open_wall(local, (end - t) // (96 * step) + 2)
            jump = t + 96 * step
            if wall is not None and offset is not None:
                # The first quarter hour whose local time (under this offset) is >= wall.
                utc_ms = (wall - _EPOCH - offset) // _MS
                jump = min(jump, -(-utc_ms // step) * step)
            if self._offset(jump, zone) != offset:
                jump = self._offset_change(t, jump, offset, zone)
            t = jump
        return None

    @staticmethod
    def _offset(t_ms: int, zone: ZoneInfo) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(t_ms / 1000, tz=zone).utcoffset()

    def _offset_change(self, lo: int, hi: int, offset: dt.timedelta | None, zone: ZoneInfo) -> int:
        """The first quarter hour in (lo, hi] whose UTC offset is not `offset` (the one
        at lo; hi's differs): bisection over the quarter hours between."""
        step = 15 * 60_000
        while hi - lo > step:
            mid = lo + (hi - lo) // step // 2 * step
            if self._offset(mid, zone) == offset:
                lo = mid
            else:
                hi = mid
        return hi

    def _next_open_wall(self, local: dt.datetime, days: int) -> dt.datetime | None:
        """The local wall-clock start (naive) of the first open minute after `local`'s
        minute, looking up to `days` days ahead; None if there is none."""
        day = local.date()
        after = local.hour * 60 + local.minute + 1
        for _ in range(days + 1):
            if not self.is_holiday(day):
                first = self._first_open_minute(day.weekday(), after)
                if first is not None:
                    return dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=first)
            day += dt.timedelta(days=1)
            after = 0
        return None

    def _first_open_minute(self, weekday: int, after: int) -> int | None:
        """The first minute >= `after` of the day (0-1439) that is open on `weekday`."""
        for start, end in self._open_runs[weekday]:
            if end > after:
                return max(start, after)
        return None

    @cached_property
    def _open_runs(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per weekday, the minutes open as `is_open` counts them (opening hours minus
        quiet hours) as [start, end) runs: between two consecutive interval bounds the
        answer cannot change, so one minute of each stretch decides it."""
        out = []
        for weekday in range(7):
            hours = self.hours.get(weekday, [])
            bounds = {b for iv in (*hours, *self.quiet) for b in iv if 0 < b < 1440}
            cuts = sorted({0, 1440, *bounds})
            out.append(
                tuple(
                    (a, b)
                    for a, b in pairwise(cuts)
                    if any(s <= a < e for s, e in hours) and not self._quiet(a)
                )
            )
        return tuple(out)
