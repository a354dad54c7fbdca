"""The placement decision: a pure function of what the scheduler sees. No I/O, no clock.

The scheduler builds a `View` after every event (a request arrives or leaves, a lease
is released or expires, a start or stop finishes, a housekeeping tick) and applies the
`Decision` that `decide()` returns, then asks again until the answer is "wait". The
rules (docs/architecture.md, "Scheduling rules"):

* **Memory.** Every model that is not stopped (starting, ready, stopping, failed) is
  *resident* and takes its `cost` of the `capacity`: its declared GPU memory, or the
  whole capacity when it declares none or there is no budget (it runs alone). The
  residents' costs never add up to more than the capacity.
* **Clean-up.** A failed resident with nothing in flight is stopped when anything at
  all waits or a stop was asked for (its dead server goes first); a ready resident
  with a stop asked for (explicit stop, idle TTL) is stopped once nothing is in flight.
* **Who starts next.** Of the models that wait and are not resident, the *head* is the
  one with the oldest waiter among those overtaken `MAX_OVERTAKES` times already, else
  the highest `priority`, then the oldest waiter, then the smaller name. Only the head starts (so a big model is
  not starved by small ones that keep fitting); it starts as soon as it fits.
* **Grants.** A ready resident's waiters are granted at once (never more than its
  `room`), except while the head is *blocked* (it does not fit): then a resident that
  may have to make room (not pinned) still grants the waiters that queued before the
  head's oldest waiter, and newer ones only until it has granted `batch_bound` since the
  blocking began.
* **Fair share.** Each waiter has a `Share`: its key's priority class and the GPU time
  that key used recently. Where not every waiter can be served (the `room` is short, or
  the blocking allowance), a model's waiters go in *fair order*: first the oldest
  waiter of a key that newer requests of other keys overtook `MAX_WAITER_OVERTAKES`
  times since it was last granted (oldest first), then the better class, then the key
  with less recent GPU time, then the older. The head among
  waiting models is chosen the same way: class, then the model's `priority`, then
  recent GPU time, then age (docs/architecture.md, "Fair share").
* **Making room.** For a blocked head, residents are stopped only when they are idle
  (ready or failed, nothing in flight) and not pinned, least recently used first, then
  lowest priority, and only when the idle ones (with what is already stopping) free
  enough: otherwise the policy waits for leases to end. A resident with a lease in
  flight is never stopped.
* **The warm tier** (docs/architecture.md, "Three tiers"). A model that opts in (`warm`)
  may leave the GPU by *sleeping* instead of stopping: its server keeps running with its
  weights in host memory, which a second budget, `host_capacity`, bounds (a sleeping
  model takes its `host_cost` of it from the moment it begins to fall asleep until it is
  awake again or stopped; one without a known cost takes all of it). A sleeping model
  takes none of the GPU (but while it wakes, or stops after failing to wake, it takes its
  `cost`); a waiting sleeping model is *woken* instead of started when it is the head and
  fits. Each idle resident chosen to make room is put to sleep when that is worth it
  (`worth_keeping_warm`: it is warm, ready, its wake saves at least `MIN_SAVING` seconds
  over its cold start, and it is not too big for the host budget), after stopping, to
  make host room, sleeping models (with no waiters) worth less than it (`warm_value`: the
  seconds a wake saves over a cold start, weighted by how recently it was used, per MiB of
  host memory); otherwise it is stopped. A sleeping model with a stop asked for is
  stopped. A model with a lease in flight is never put to sleep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from manager.state import ModelState

MAX_OVERTAKES = 2
"""How many starts of other models a waiting model lets go first (priorities) before it
goes next whatever its priority."""
MIN_SAVING = 1.0
"""Seconds a wake must save over a cold start for a model to be kept warm: below that the
host memory is better left to others (stop what is cheap to cold-start)."""
RECENCY = 600.0
"""Seconds of idleness that halve a sleeping model's `warm_value` (how likely it is to be
asked for again)."""
MAX_WAITER_OVERTAKES = 16
"""How many newer requests of other keys (a better class, or less recent GPU time) a
key waiting for a model lets go first before its oldest request goes next whatever its
share: nothing starves, and a key's own backlog is not turned into a FIFO ahead of the
others (the count is per key and starts again at each of its grants)."""


@dataclass(frozen=True, order=True)
class Share:
    """What a waiter's place in the fair order depends on: the class of the key it comes
    for (0 high, 1 normal, 2 low), that key's recent GPU-seconds, and, for the oldest
    waiter of its key on this model (0 for the others), how many newer requests of other
    keys were granted before it since its key's last grant."""

    rank: int = 1
    used: float = 0.0
    overtaken: int = 0


EQUAL = Share()


@dataclass(frozen=True)
class ModelView:
    """One model at one instant. `waiters` are arrival keys (any strictly increasing
    order, shared by all models), oldest first."""

    state: ModelState = ModelState.STOPPED
    cost: int | None = None
    """GPU memory it takes while resident; None: all of it."""
    in_flight: int = 0
    """Leases held on it now."""
    waiters: Sequence[float] = ()
    priority: int = 0
    pinned: bool = False
    last_used: float = 0.0
    """When a lease on it was last granted or released (any clock): least recently used
    is stopped first."""
    room: int | None = None
    """Requests its server may still be given; None: unbounded. Each grant takes one."""
    stop_requested: bool = False
    """An explicit stop or its idle TTL."""
    granted_since_blocked: int = 0
    """Grants that counted against `batch_bound` since the head became blocked."""
    overtaken: int = 0
    """Starts of other models that went first while it waited."""
    shares: Sequence[Share] = ()
    """Each waiter's `Share`, in the order of `waiters`; empty: all equal (FIFO)."""
    warm: bool = False
    """It may be put to sleep (models.json ``warm``)."""
    host_cost: int | None = None
    """Host memory it takes while asleep; None: all of the host capacity."""
    gpu_free: bool = False
    """Its GPU memory is given back: it fell asleep and has not begun to wake (then it
    takes no GPU memory even while `stopping` or `failed`)."""
    host_held: bool = False
    """Its weights are (or are going) into host memory: from the moment it begins to fall
    asleep until it is awake again or its server is gone."""
    wake_s: float = 0.0
    """How long its wake takes (learned, else an estimate)."""
    load_s: float = 0.0
    """How long its cold start takes (learned, else an estimate)."""

    def share(self, i: int) -> Share:
        return self.shares[i] if self.shares else EQUAL

    def fair_order(self) -> list[int]:
        """Indices into `waiters`, in the order they are granted (module docstring)."""
        if not self.shares:
            return list(range(len(self.waiters)))
        return sorted(range(len(self.waiters)), key=self._fair_key)

    def _fair_key(self, i: int) -> tuple[bool, int, float, float]:
        share = self.shares[i]
        if share.overtaken >= MAX_WAITER_OVERTAKES:
            return (False, 0, 0.0, self.waiters[i])
        return (True, share.rank, share.used, self.waiters[i])

    def best(self) -> tuple[int, float]:
        """The best (class, recent GPU time) among its waiters (for the head)."""
        if not self.shares:
            return (1, 0.0)
        return min((s.rank, s.used) for s in self.shares)

    @property
    def resident(self) -> bool:
        """On the GPU (or may be): any state but stopped and sleeping, and not a model
        whose GPU memory went with its sleep (`gpu_free`)."""
        return self.state.on_gpu and not self.gpu_free

    @property
    def startable(self) -> bool:
        """Off the GPU, so a waiter makes it start (stopped) or wake (sleeping)."""
        return self.state in (ModelState.STOPPED, ModelState.SLEEPING)


@dataclass(frozen=True)
class View:
    """Every model, and the memory they share: `capacity` None means one model at a time."""

    models: Mapping[str, ModelView] = field(default_factory=dict)
    capacity: int | None = None
    batch_bound: int = 1
    host_capacity: int | None = None
    """Host memory sleeping models may take together; None: no warm tier (nothing sleeps)."""
    now: float = 0.0
    """The clock `last_used` is on (for `warm_value`'s recency)."""


@dataclass(frozen=True)
class Decision:
    """One step. At most one of `grant`, `stop`, `start`, `sleep`, `wake` is set; none of
    them means wait. `sleep` names an idle ready model to put to sleep, `wake` a sleeping
    model to wake.

    `grant` names a ready resident and `count` how many of its waiters get a lease now:
    `picks`, their indices in its `waiters`, in grant order (fair order); `counted` how
    many of those count against `batch_bound`.
    """

    grant: str | None = None
    count: int = 0
    counted: int = 0
    picks: tuple[int, ...] = field(default=(), compare=False)
    stop: str | None = None
    start: str | None = None
    sleep: str | None = None
    wake: str | None = None

    @property
    def is_wait(self) -> bool:
        return not (self.grant or self.stop or self.start or self.sleep or self.wake)


WAIT = Decision()


def cost(view: View, name: str) -> int:
    """What `name` takes of the capacity (a model without a declaration: all of it)."""
    if view.capacity is None:
        return 1
    declared = view.models[name].cost
    return view.capacity if declared is None else declared


def capacity(view: View) -> int:
    return 1 if view.capacity is None else view.capacity


def used(view: View) -> int:
    return sum(cost(view, name) for name, m in view.models.items() if m.resident)


def fits(view: View, name: str) -> bool:
    """Whether `name` can start (or wake) now beside the residents."""
    return used(view) + cost(view, name) <= capacity(view)


def host_cost(view: View, name: str) -> int:
    """What `name` takes of the host capacity while asleep (unknown: all of it)."""
    declared = view.models[name].host_cost
    cap = view.host_capacity or 0
    return cap if declared is None else declared


def host_used(view: View) -> int:
    return sum(host_cost(view, n) for n, m in view.models.items() if m.host_held)


def warm_value(view: View, name: str) -> float:
    """How much keeping `name` warm is worth per MiB of host memory: the seconds its wake
    saves over a cold start, halved for every `RECENCY` seconds it has been idle."""
    m = view.models[name]
    idle = max(0.0, view.now - m.last_used)
    saving = max(0.0, m.load_s - m.wake_s) * math.pow(0.5, idle / RECENCY)
    return saving / max(1, host_cost(view, name))


def worth_keeping_warm(view: View, name: str) -> bool:
    """Whether `name` may be put to sleep at all: warm, ready, with a host budget that can
    hold it, and a wake that saves at least `MIN_SAVING` seconds over its cold start."""
    m = view.models[name]
    return (
        m.warm
        and m.state is ModelState.READY
        and view.host_capacity is not None
        and host_cost(view, name) <= view.host_capacity
        and m.load_s - m.wake_s >= MIN_SAVING
    )


def host_room_for(view: View, name: str) -> list[str] | None:
    """The sleeping models to stop so that `name` can fall asleep: [] when it fits now,
    least valuable first and only those worth less than it; None when that is not
    enough (then `name` is stopped instead). Host memory that sleeping models being
    stopped still hold counts as free already (`make_room` waits for it)."""
    assert view.host_capacity is not None
    short = host_used(view) + host_cost(view, name) - view.host_capacity
    if short <= 0:
        return []
    short -= host_freeing(view)
    if short <= 0:
        return []
    mine = warm_value(view, name)
    sleepers = sorted(
        (warm_value(view, n), n)
        for n, m in view.models.items()
        if m.state is ModelState.SLEEPING and not m.waiters and not m.stop_requested
    )
    chosen: list[str] = []
    for value, n in sleepers:
        if value >= mine:
            break
        chosen.append(n)
        short -= host_cost(view, n)
        if short <= 0:
            return chosen
    return None


def host_freeing(view: View) -> int:
    """Host memory that models being stopped still hold (it is free once they stop)."""
    return sum(
        host_cost(view, n)
        for n, m in view.models.items()
        if m.host_held and m.state is ModelState.STOPPING
    )


def head(view: View) -> str | None:
    """The waiting, non-resident model that starts next (see the module's rules)."""
    candidates = [
        (
            (False, 0, 0, 0.0) if m.overtaken >= MAX_OVERTAKES else _head_key(m),
            m.waiters[0],
            name,
        )
        for name, m in view.models.items()
        if m.waiters and m.startable
    ]
    return min(candidates)[2] if candidates else None


def _head_key(m: ModelView) -> tuple[bool, int, int, float]:
    rank, used = m.best()
    return (True, rank, -m.priority, used)


def blocked(view: View) -> str | None:
    """The head, when it does not fit now (residents must make room first); else None."""
    name = head(view)
    return name if name is not None and not fits(view, name) else None


def grants(view: View, name: str, blocker: str | None) -> tuple[tuple[int, ...], int]:
    """(which of `name`'s waiters to grant now, as indices into its `waiters` in fair
    order; how many of those count against `batch_bound`)."""
    m = view.models[name]
    if m.state is not ModelState.READY or m.stop_requested or not m.waiters:
        return (), 0
    order = m.fair_order()
    newer: set[int] = set()
    if blocker is not None and not m.pinned:
        first_blocked = view.models[blocker].waiters[0]
        allowance = max(0, view.batch_bound - m.granted_since_blocked)
        newer = {i for i in order if m.waiters[i] > first_blocked}
        allowed = [i for i in order if i in newer][:allowance]
        order = [i for i in order if i not in newer or i in allowed]
    if m.room is not None:
        order = order[: m.room]
    return tuple(order), sum(1 for i in order if i in newer)


def victims(view: View, name: str) -> list[str] | None:
    """The idle residents to stop so that `name` fits (least recently used first, then
    lowest priority), [] when what is already stopping is enough, None when the idle ones
    are not enough (wait for leases to end)."""
    short = used(view) + cost(view, name) - capacity(view)
    short -= sum(
        cost(view, n)
        for n, m in view.models.items()
        if m.resident and m.state in (ModelState.STOPPING, ModelState.FALLING_ASLEEP)
    )
    if short <= 0:
        return []
    idle = sorted(
        (m.last_used, m.priority, n)
        for n, m in view.models.items()
        if m.state in (ModelState.READY, ModelState.FAILED) and not m.in_flight and not m.pinned
    )
    chosen: list[str] = []
    for _, _, n in idle:
        chosen.append(n)
        short -= cost(view, n)
        if short <= 0:
            return chosen
    return None


def decide(view: View) -> Decision:
    """The next step for `view`. Pure and total: every view gets an answer."""
    anyone_waiting = any(m.waiters for m in view.models.values())
    for name, m in view.models.items():
        if m.in_flight:
            continue
        if m.state is ModelState.FAILED and (anyone_waiting or m.stop_requested):
            return Decision(stop=name)
        if m.state in (ModelState.READY, ModelState.SLEEPING) and m.stop_requested:
            return Decision(stop=name)
    first = head(view)
    if first is not None and fits(view, first):
        if view.models[first].state is ModelState.SLEEPING:
            return Decision(wake=first)
        return Decision(start=first)
    blocker = first
    ready = sorted(
        (m.waiters[0], name)
        for name, m in view.models.items()
        if m.state is ModelState.READY and m.waiters
    )
    for _, name in ready:
        picks, counted = grants(view, name, blocker)
        if picks:
            return Decision(grant=name, count=len(picks), counted=counted, picks=picks)
    if blocker is not None:
        chosen = victims(view, blocker)
        if chosen:
            return make_room(view, chosen[0])
    return WAIT


def make_room(view: View, name: str) -> Decision:
    """How the idle resident `name` leaves the GPU: put to sleep when it is worth keeping
    warm and the host has room (after stopping sleeping models worth less: first those
    stops), else stopped."""
    if worth_keeping_warm(view, name):
        sleepers = host_room_for(view, name)
        if sleepers:
            return Decision(stop=sleepers[0])
        if sleepers == []:
            if host_used(view) + host_cost(view, name) > (view.host_capacity or 0):
                return WAIT  # sleepers being stopped still hold the room it needs
            return Decision(sleep=name)
    return Decision(stop=name)
