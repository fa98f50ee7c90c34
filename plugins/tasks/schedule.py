"""The time model of scheduled messages: what the model fills in, and when that is.

The model never computes epoch times: it fills a small structured argument (`in_seconds`, a local
`at`, or a `repeat` rule) and the user's IANA zone turns it into UTC here. Repeating local times
are computed from the wall clock of each day, so "every weekday at 9:00" stays at 9:00 across a
DST change (a time inside the spring-forward gap fires as far after it as it was into it, an
ambiguous one at its first occurrence).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MIN_REPEAT_SECONDS = 60  # nothing repeats faster: a mistaken rule must not turn into spam
MAX_AHEAD_DAYS = 3660  # ten years: a typo in the year is an error, not a task nobody will see
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERY = ("minutes", "hour", "day", "weekday", "week")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")
_MINUTE = re.compile(r"^:?(\d{1,2})$")


class ScheduleError(ValueError):
    """Input the model can correct; the message goes back to it verbatim."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone, or a ScheduleError telling the model how to name one."""
    try:
        return ZoneInfo(name.strip())
    except (ValueError, ZoneInfoNotFoundError):
        raise ScheduleError(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin") from None


def _clock_time(text: str) -> time:
    match = _CLOCK.match(text.strip())
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ScheduleError(f"time {text!r} is not HH:MM (24-hour clock)")
    return time(int(match[1]), int(match[2]))


def _local_instant(day: date, at: time, tz: ZoneInfo) -> float:
    """Epoch seconds of a wall-clock time (PEP 495 fold=0: the first of an ambiguous pair; a time
    inside a spring-forward gap is read with the offset before it, so 02:30 becomes 03:30)."""
    return datetime.combine(day, at, tzinfo=tz).timestamp()


@dataclass(frozen=True)
class Repeat:
    """A repeating rule, stored as its dict in the task's metadata."""

    every: str
    at: str | None = None  # HH:MM for day/weekday/week, :MM for hour
    days: tuple[str, ...] = ()
    interval_minutes: int = 0
    anchor: float = 0.0  # epoch seconds of the first run, for fixed intervals

    @classmethod
    def parse(cls, raw: dict[str, Any], now: float, tz: ZoneInfo) -> Repeat:
        every = str(raw.get("every", "")).strip().lower()
        if every not in EVERY:
            raise ScheduleError(f"repeat.every must be one of {', '.join(EVERY)}")
        days = tuple(dict.fromkeys(str(d).strip().lower()[:3] for d in raw.get("days") or ()))
        if any(d not in DAYS for d in days):
            raise ScheduleError(f"repeat.days must be among {', '.join(DAYS)}")
        at = raw.get("at")
        if every == "minutes":
            minutes = int(raw.get("interval_minutes") or 0)
            if minutes * 60 < MIN_REPEAT_SECONDS:
                raise ScheduleError(f"repeat every {minutes} minutes is too often; the least is "
                                    f"{MIN_REPEAT_SECONDS // 60} minute")
            return cls(every, interval_minutes=minutes, anchor=now + minutes * 60)
        if every == "hour":
            local = datetime.fromtimestamp(now, tz)
            match = _MINUTE.match(str(at).strip()) if at is not None else None
            if at is not None and (match is None or int(match[1]) > 59):
                raise ScheduleError("for an hourly repeat, at is the minute past the hour, e.g. :15")
            minute = int(match[1]) if match else local.minute
            first = local.replace(minute=minute, second=0, microsecond=0).timestamp()
            while first <= now:
                first += 3600
            return cls(every, at=f":{minute:02d}", interval_minutes=60, anchor=first)
        if at is None:
            raise ScheduleError(f"a repeat every {every} needs at (HH:MM, local time)")
        clock = _clock_time(str(at))
        if every == "weekday" and days:
            raise ScheduleError("every weekday means mon-fri; use every week with days to pick days")
        if every == "week" and not days:
            days = (DAYS[datetime.fromtimestamp(now, tz).weekday()],)
        return cls(every, at=f"{clock:%H:%M}", days=days)

    def to_dict(self) -> dict[str, Any]:
        return {"every": self.every, "at": self.at, "days": list(self.days),
                "interval_minutes": self.interval_minutes, "anchor": self.anchor}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Repeat:
        return cls(data["every"], data.get("at"), tuple(data.get("days") or ()),
                   int(data.get("interval_minutes") or 0), float(data.get("anchor") or 0))

    def _weekdays(self) -> set[int]:
        if self.every == "weekday":
            return {0, 1, 2, 3, 4}
        return {DAYS.index(d) for d in self.days} if self.days else set(range(7))

    def next_after(self, after: float, tz: ZoneInfo) -> float:
        """The first run strictly after `after` (epoch seconds)."""
        if self.interval_minutes:
            step = self.interval_minutes * 60
            if self.anchor > after:
                return self.anchor
            return self.anchor + (int((after - self.anchor) // step) + 1) * step
        assert self.at is not None
        clock, weekdays = _clock_time(self.at), self._weekdays()
        day = datetime.fromtimestamp(after, tz).date()
        for offset in range(8):
            candidate = day + timedelta(days=offset)
            if candidate.weekday() in weekdays:
                instant = _local_instant(candidate, clock, tz)
                if instant > after:
                    return instant
        raise AssertionError("a weekly rule always has a run within 8 days")

    def describe(self) -> str:
        if self.every == "minutes":
            return f"every {self.interval_minutes} minutes"
        if self.every == "hour":
            return f"every hour at {self.at}"
        if self.every == "weekday":
            return f"every weekday at {self.at}"
        if self.every == "day" and not self.days:
            return f"every day at {self.at}"
        return f"every {', '.join(self.days)} at {self.at}"


@dataclass(frozen=True)
class When:
    """The first run and, for a repeating message, its rule."""

    first: float
    repeat: Repeat | None


def parse_when(params: dict[str, Any], now: float, tz: ZoneInfo) -> When:
    """Exactly one of `in_seconds`, `at` or `repeat`; errors say what to fix."""
    given = [k for k in ("in_seconds", "at", "repeat") if params.get(k) not in (None, "", {})]
    if len(given) != 1:
        raise ScheduleError("give exactly one of in_seconds (a delay), at (a local time) or repeat (a rule)")
    if given == ["in_seconds"]:
        seconds = float(params["in_seconds"])
        if seconds < 1:
            raise ScheduleError("in_seconds must be at least 1")
        first = now + seconds
    elif given == ["at"]:
        first = _parse_at(str(params["at"]), now, tz)
    else:
        repeat = Repeat.parse(params["repeat"], now, tz)
        return When(repeat.next_after(now, tz), repeat)
    if first - now > MAX_AHEAD_DAYS * 86400:
        raise ScheduleError("that is more than ten years ahead; check the year")
    return When(first, None)


def _parse_at(text: str, now: float, tz: ZoneInfo) -> float:
    """"HH:MM" is the next such local time; "YYYY-MM-DDTHH:MM" a local date and time."""
    text = text.strip()
    if _CLOCK.match(text):
        clock, today = _clock_time(text), datetime.fromtimestamp(now, tz).date()
        for offset in (0, 1, 2):
            instant = _local_instant(today + timedelta(days=offset), clock, tz)
            if instant > now:
                return instant
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError:
        raise ScheduleError(f"at {text!r} is not YYYY-MM-DDTHH:MM or HH:MM (local time)") from None
    if parsed.tzinfo is not None:  # an explicit offset wins over the zone
        instant = parsed.timestamp()
    else:
        instant = _local_instant(parsed.date(), parsed.time(), tz)
    if instant <= now:
        shown = datetime.fromtimestamp(now, tz)
        raise ScheduleError(f"{text} is in the past (it is now {shown:%Y-%m-%d %H:%M} in {tz.key})")
    return instant


def local_text(instant: float, tz: ZoneInfo) -> str:
    """How a time is shown to the user: in their zone, with the weekday."""
    return f"{datetime.fromtimestamp(instant, tz):%a %Y-%m-%d %H:%M} ({tz.key})"


def duration_text(seconds: float) -> str:
    """'3 h 5 min', '40 s': how late a message is."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    days, rest = divmod(seconds // 60, 1440)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    return " ".join(p for p in parts if p)
