"""Which host serves a request for a model: the placement policy, a pure function.

`place(hosts)` takes one `HostView` per host of the proxy's catalogue (what the proxy
knows of it at the moment of the request, from each manager's event stream and the last
model list: `proxy.hosts.Fleet.views`) and returns a `Placement`: the awake hosts to try,
best first, and the sleeping hosts that could serve if woken. No I/O, no clock: the caller
says which down hosts are due for a retry.

The order (docs/hosts.md, "Placement"):

1. a host where the model is ``ready`` (resident);
2. one where it is loading (``starting``);
3. one where it is ``waking``, ``sleeping`` or ``falling_asleep`` (in host RAM, cheap to
   wake: the warm tier, `wire.models.WARM_STATES`);
4. one where starting it stops nothing: no other model holds the GPU there, or the
   model's declared memory fits the host's budget beside every holder's declared memory;
5. the rest by the cheapest eviction: fewest requests in flight on the models in the
   way, then fewest pinned ones among them, then fewest models, then fewest MiB;

and within each of those, the shortest queue (the manager's waiting lease requests plus
this proxy's requests riding on them), then the host's name (so every proxy that sees the same states picks the
same host). A state this module does not know counts, for the model asked for, as one that
needs a start, and for another model, as one that holds memory.

A host that is not up is skipped at once; one whose backoff has passed (`HostView.retry_due`)
comes after every host that is up (one try, then the caller backs off again). A host that
is asleep (sleepable and not up) is never in `Placement.order`: it is in `Placement.wake`,
by the same ranking on its last known states, for the caller to wake when `order` is
empty or every host in it failed. A host that does not serve the model is in neither.

A lease never spans two hosts: the caller asks one host of the order for its lease, and
moves to the next only with a fresh lease from that one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wire.models import WARM_STATES

READY, LOADING, WARM, FREE, EVICT = range(5)
"""The ranks, best first (module docstring)."""

NOT_HOLDING = frozenset({"stopped", "failed", "sleeping"})
"""States of a model that hold no GPU memory; any other state (unknown ones included) does
(``falling_asleep`` and ``waking`` included: their weights are on the move)."""


@dataclass(frozen=True, slots=True)
class Other:
    """Another model on the host, as placement sees it."""

    name: str
    state: str
    gpu_memory_mib: int | None = None
    in_flight: int = 0
    pinned: bool = False

    @property
    def holds(self) -> bool:
        return self.state not in NOT_HOLDING


@dataclass(frozen=True, slots=True)
class HostView:
    """One host for one request."""

    name: str
    state: str | None
    """The model's state on this host; None: the host does not serve the model."""
    up: bool = True
    """The host's manager answers (its event stream is connected, or its last answer came)."""
    retry_due: bool = False
    """Not up, but its backoff has passed: worth one more try."""
    asleep: bool = False
    """Sleepable and not up: it can be woken (Wake-on-LAN)."""
    queue: int = 0
    """Requests waiting for the model on this host."""
    need_mib: int | None = None
    """The model's declared GPU memory on this host (None: undeclared, it runs alone)."""
    budget_mib: int | None = None
    """The host's GPU budget (its manager's list says it), when known."""
    others: tuple[Other, ...] = ()
    """The host's other models."""


@dataclass(frozen=True, slots=True)
class Placement:
    order: tuple[str, ...]
    """Awake hosts (and down ones due for a retry, last) to try, best first."""
    wake: tuple[str, ...]
    """Sleeping hosts that serve the model, best first: woken when `order` cannot serve."""


def stops_nothing(host: HostView) -> bool:
    """Starting the model on `host` stops no other model (module docstring, rank 4)."""
    holders = [o for o in host.others if o.holds]
    if not holders:
        return True
    if host.budget_mib is None or host.need_mib is None:
        return False
    declared = [o.gpu_memory_mib for o in holders]
    if any(mib is None for mib in declared):
        return False  # an undeclared resident runs alone
    return host.need_mib + sum(m for m in declared if m is not None) <= host.budget_mib


def eviction_cost(host: HostView) -> tuple[int, int, int, int]:
    """What starting the model there would stop, compared as a tuple (smaller: cheaper)."""
    holders = [o for o in host.others if o.holds]
    return (
        sum(o.in_flight for o in holders),
        sum(1 for o in holders if o.pinned),
        len(holders),
        sum(o.gpu_memory_mib or 0 for o in holders),
    )


def rank(host: HostView) -> int:
    state = host.state
    if state == "ready":
        return READY
    if state == "starting":
        return LOADING
    if state in WARM_STATES:
        return WARM
    return FREE if stops_nothing(host) else EVICT


def key(host: HostView) -> tuple[int, tuple[int, int, int, int], int, str]:
    """The sort key of a host that serves the model (smaller: better)."""
    r = rank(host)
    cost = eviction_cost(host) if r == EVICT else (0, 0, 0, 0)
    return (r, cost, host.queue, host.name)


def place(hosts: Iterable[HostView]) -> Placement:
    """The hosts to try for a model, and the ones to wake (module docstring). Pure."""
    up: list[HostView] = []
    due: list[HostView] = []
    asleep: list[HostView] = []
    for host in hosts:
        if host.state is None:
            continue
        if host.up:
            up.append(host)
        elif host.asleep:
            asleep.append(host)
        elif host.retry_due:
            due.append(host)
    return Placement(
        order=tuple(h.name for h in (*sorted(up, key=key), *sorted(due, key=key))),
        wake=tuple(h.name for h in sorted(asleep, key=key)),
    )
