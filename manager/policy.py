"""The swap decision: a pure function of what the scheduler sees. No I/O, no clock.

The scheduler builds a `View` after every event (a request arrives or leaves,
a lease is released or expires, a start or stop finishes, a housekeeping tick)
and applies the `Decision` that `decide()` returns, then asks again until the
answer is "wait". The rules (docs/architecture.md, "Scheduling rules"):

* One model resident at a time: a start is only decided when nothing is resident.
* The resident, ready model's waiters are granted at once, except while other
  models have waiters: then waiters that queued before every other model's
  oldest waiter are still granted (they are first in line), and newer ones only
  until `batch_bound` of them have been granted since the contention began.
* Never more grants than the resident's `room` (its per-model concurrency limit):
  the rest wait.
* The resident is stopped only with no lease in flight, and only when another
  model has waiters, a stop was asked for (explicit stop or idle TTL), or it
  has failed and anything at all is waiting (its dead server is removed first).
* The next model to start is the one whose oldest waiter is oldest (FIFO across
  models); ties go to the smaller name so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from manager.state import ModelState


@dataclass(frozen=True)
class View:
    """What the scheduler knows at one instant.

    `waiters` maps a model to its waiters' arrival keys (enqueue times or
    tickets: any strictly increasing order), oldest first; models without
    waiters may be absent or map to an empty sequence. `in_flight` maps a
    model to its leases in flight. `grants_since_contention` counts the grants
    that counted against `batch_bound` since other models started waiting.
    `stop_requested` is about the resident only (explicit stop or idle TTL).
    """

    resident: str | None = None
    resident_state: ModelState | None = None
    in_flight: Mapping[str, int] = field(default_factory=dict)
    waiters: Mapping[str, Sequence[float]] = field(default_factory=dict)
    grants_since_contention: int = 0
    batch_bound: int = 1
    stop_requested: bool = False
    room: int | None = None
    """Requests the resident's server may still be given (its `max_in_flight` minus the
    uses its leases in flight may admit); None: unbounded. Each grant takes at least one."""


@dataclass(frozen=True)
class Decision:
    """One step. At most one of `grant`, `stop`, `start` is set; none of them means wait.

    `grant` is how many of the resident's oldest waiters get a lease now, and
    `counted` how many of those count against `batch_bound`.
    """

    grant: int = 0
    counted: int = 0
    stop: str | None = None
    start: str | None = None

    @property
    def is_wait(self) -> bool:
        return not (self.grant or self.stop or self.start)


WAIT = Decision()


def next_model(waiters: Mapping[str, Sequence[float]]) -> str | None:
    """The model whose oldest waiter is oldest (ties: smallest name), or None if nobody waits."""
    candidates = [(times[0], name) for name, times in waiters.items() if times]
    return min(candidates)[1] if candidates else None


def oldest_other(waiters: Mapping[str, Sequence[float]], model: str) -> float | None:
    """The arrival key of the oldest waiter for any model but `model`, or None."""
    times = [t[0] for name, t in waiters.items() if name != model and t]
    return min(times) if times else None


def grants_for_resident(view: View) -> tuple[int, int]:
    """(how many of the resident's oldest waiters to grant, how many of those count)."""
    if view.resident is None:
        return 0, 0
    mine = view.waiters.get(view.resident, ())
    if not mine:
        return 0, 0
    contender = oldest_other(view.waiters, view.resident)
    if contender is None:
        return len(mine), 0
    ahead = sum(1 for t in mine if t < contender)
    allowance = max(0, view.batch_bound - view.grants_since_contention)
    counted = min(len(mine) - ahead, allowance)
    return ahead + counted, counted


def decide(view: View) -> Decision:
    """The next step for `view`. Pure and total: every view gets an answer."""
    if view.resident is None:
        model = next_model(view.waiters)
        return Decision(start=model) if model else WAIT
    state = view.resident_state
    busy = view.in_flight.get(view.resident, 0) > 0
    if state is ModelState.FAILED:
        anyone_waiting = any(view.waiters.values())
        if not busy and (anyone_waiting or view.stop_requested):
            return Decision(stop=view.resident)
        return WAIT
    if state is not ModelState.READY:
        return WAIT  # starting or stopping: the running task will report back
    if view.stop_requested:
        return Decision(stop=view.resident) if not busy else WAIT
    grant, counted = grants_for_resident(view)
    if view.room is not None and grant > view.room:
        counted -= min(counted, grant - view.room)  # the uncounted ones are oldest: first
        grant = view.room
    if grant:
        return Decision(grant=grant, counted=counted)
    if not busy and oldest_other(view.waiters, view.resident) is not None:
        return Decision(stop=view.resident)
    return WAIT
