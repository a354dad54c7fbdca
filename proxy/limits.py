"""Each key's limits, checked before any model work (docs/keys.md, "Limits").

`Limiter.admit` is called by `proxy.modelcall` on entry to a model call, before a lease
is asked for; a refusal is a `LimitExceeded` (429 with ``Retry-After``):

- **rate** (``rate`` requests a minute): a token bucket holding `rate` tokens, refilled
  evenly (`rate` / 60 a second). A burst of `rate` is allowed, then one every 60/`rate`
  seconds; ``Retry-After`` is the wait for the next token.
- **concurrency**: at most ``concurrency`` calls of the key in flight (a stream counts
  until its end); ``Retry-After: 1``.
- **GPU budget** (``gpu_day``, ``gpu_month`` GPU-seconds in the UTC day / month, as
  counted by `proxy.usage.Usage`): once spent, refused until the reset; the message
  names the budget and the reset time, ``Retry-After`` the seconds to it. A call in
  flight when the budget runs out finishes (it is counted when it ends).

Jobs (``interactive=False``) meet only the budget: their rate is the job queue's.
The state is a dict per key name (buckets, calls in flight), touched only when the key
has a limit: a key without limits costs one attribute test.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.errors import ProxyError
from proxy.keys import Principal
from proxy.usage import Usage, next_day, next_month


class LimitExceeded(ProxyError):
    """A key's rate, concurrency or GPU budget is spent (429, with Retry-After)."""

    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


@dataclass(slots=True)
class TokenBucket:
    """`capacity` tokens, refilled at `per_second`; pure (the caller gives the time)."""

    capacity: float
    per_second: float
    tokens: float
    stamp: float

    @classmethod
    def per_minute(cls, rate: int, now: float) -> TokenBucket:
        return cls(capacity=float(rate), per_second=rate / 60.0, tokens=float(rate), stamp=now)

    def take(self, now: float) -> float:
        """Take one token at `now`: 0.0 when taken, else the seconds until one is there."""
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.per_second)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.per_second


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


class Limiter:
    """The limits of every key (module docstring). The event loop only (no lock)."""

    def __init__(
        self,
        usage: Usage,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.usage = usage
        self.clock, self.wall = clock, wall
        self.buckets: dict[str, TokenBucket] = {}
        self.in_flight: dict[str, int] = {}

    def admit(self, who: Principal, *, interactive: bool = True) -> bool:
        """Admit one call of `who`, or raise LimitExceeded. True when a concurrency slot
        was taken (give it back with `release`)."""
        if not who.limited:
            return False
        name = who.name
        if who.gpu_day is not None or who.gpu_month is not None:
            self._check_budget(who)
        if not interactive:
            return False
        if who.rate is not None:
            bucket = self.buckets.get(name)
            now = self.clock()
            if bucket is None or bucket.capacity != who.rate:
                bucket = self.buckets[name] = TokenBucket.per_minute(who.rate, now)
            wait = bucket.take(now)
            if wait:
                self.usage.refuse(name, "rate")
                raise LimitExceeded(
                    f"Rate limit of key '{name}': {who.rate} requests a minute; "
                    f"try again in {retry_after(wait)} s.",
                    headers={"Retry-After": retry_after(wait)},
                )
        if who.concurrency is not None:
            held = self.in_flight.get(name, 0)
            if held >= who.concurrency:
                self.usage.refuse(name, "concurrency")
                raise LimitExceeded(
                    f"Concurrency limit of key '{name}': {who.concurrency} requests at once; "
                    "wait for one to finish.",
                    code="concurrency_limit_exceeded",
                    headers={"Retry-After": "1"},
                )
            self.in_flight[name] = held + 1
            return True
        return False

    def release(self, who: Principal) -> None:
        """Give back the concurrency slot `admit` took."""
        left = self.in_flight.get(who.name, 0) - 1
        if left > 0:
            self.in_flight[who.name] = left
        else:
            self.in_flight.pop(who.name, None)

    def _check_budget(self, who: Principal) -> None:
        now = self.wall()
        day, month = self.usage.gpu_spent(who.name, now)
        for label, budget, spent, reset in (
            ("daily", who.gpu_day, day, next_day),
            ("monthly", who.gpu_month, month, next_month),
        ):
            if budget is not None and spent >= budget:
                at = reset(now)
                self.usage.refuse(who.name, f"gpu_{label}")
                raise LimitExceeded(
                    f"The {label} GPU budget of key '{who.name}' is spent ({spent:.0f} of "
                    f"{budget:g} GPU-seconds); it resets at {_when(at)}.",
                    code="gpu_budget_exceeded",
                    headers={"Retry-After": retry_after(at - now)},
                )
