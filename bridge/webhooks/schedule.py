"""When to try a failed delivery again. Pure: no I/O.

The default schedule, the wait after the n-th failed attempt (each +/-20 % jitter):

====  =======  ==============
try   wait     total so far
====  =======  ==============
1     5 s      5 s
2     30 s     35 s
3     2 min    2.6 min
4     10 min   12.6 min
5     30 min   43 min
6     1 h      1.7 h
7     2 h      3.7 h
8     4 h      7.7 h
9     8 h      15.7 h
10    12 h     27.7 h
11    12 h     39.7 h
12    12 h     51.7 h
13    12 h     63.7 h
14    12 h     75.7 h (3.2 days)
====  =======  ==============

Fifteen attempts in all; after the fifteenth fails the delivery is given up (``failed``;
``ftbridge webhooks replay`` sends it again). A ``Retry-After`` header (seconds or an HTTP
date) pushes the next attempt later, never earlier, and is capped at 12 h.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

DEFAULT_DELAYS: tuple[float, ...] = (
    5,
    30,
    120,
    600,
    1800,
    3600,
    7200,
    14400,
    28800,
    43200,
    43200,
    43200,
    43200,
    43200,
)


@dataclass
class RetrySchedule:
    """``next_delay(attempts)`` after ``attempts`` failed tries; None = give up."""

    delays: Sequence[float] = DEFAULT_DELAYS
    jitter: float = 0.2
    retry_after_cap: float = 43200.0
    rng: random.Random = field(default_factory=random.Random)

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    def next_delay(self, attempts: int, *, retry_after: float | None = None) -> float | None:
        if attempts < 1 or attempts > len(self.delays):
            return None
        base = self.delays[attempts - 1]
        delay = base * (1 + self.rng.uniform(-self.jitter, self.jitter))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_cap))
        return delay


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
