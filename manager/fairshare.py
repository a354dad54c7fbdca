"""Who used the GPU recently: decayed GPU-seconds per API key name, for the fair share.

The manager learns each lease's key by name and class only (`wire.lease.LeaseRequest`);
when a lease ends (released, expired, dropped) its hold time, grant to end, is charged
to its key's name. `Usage` keeps one number per name that halves every `half_life`
seconds, so what a key used an hour ago hardly counts and what it used a minute ago
does. A lease still held counts its hold time so far (`Scheduler` adds it), so a key
that holds the model for a long time yields without waiting for its release.

Why hold time: under contention every lease is for one request (docs/architecture.md,
"Leases"), so hold time is that request's time on the model server, exactly what the
fair order needs; without contention nobody waits, and a shared lease's hold time
(however many of one key's requests ride on it) is the time that key kept the model.

Synchronous and clock-driven (the scheduler's monotonic clock); used on the scheduler's
event loop only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

FORGET_BELOW = 1e-3
"""GPU-seconds under which a name is forgotten (its entry dropped)."""


class Usage:
    """Decayed GPU-seconds per key name."""

    def __init__(self, half_life: float, clock: Callable[[], float]) -> None:
        """`half_life`: seconds after which a charge counts half (> 0)."""
        if half_life <= 0:
            raise ValueError("half_life must be > 0")
        self._rate = math.log(2) / half_life
        self._clock = clock
        self._used: dict[str, tuple[float, float]] = {}
        """name -> (GPU-seconds at `stamp`, stamp)."""

    def _decayed(self, value: float, stamp: float, now: float) -> float:
        return value * math.exp(-self._rate * max(0.0, now - stamp))

    def charge(self, name: str, seconds: float) -> None:
        """Add `seconds` of GPU time to `name` (now)."""
        if seconds <= 0:
            return
        now = self._clock()
        value, stamp = self._used.get(name, (0.0, now))
        self._used[name] = (self._decayed(value, stamp, now) + seconds, now)

    def used(self, name: str) -> float:
        """`name`'s GPU-seconds, decayed to now."""
        entry = self._used.get(name)
        return 0.0 if entry is None else self._decayed(*entry, self._clock())

    def snapshot(self) -> dict[str, float]:
        """Every known name's GPU-seconds now (names that decayed to nothing forgotten)."""
        now = self._clock()
        out = {}
        for name, (value, stamp) in list(self._used.items()):
            current = self._decayed(value, stamp, now)
            if current < FORGET_BELOW:
                del self._used[name]
            else:
                out[name] = current
        return out
