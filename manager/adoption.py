"""Adoption: which model servers a starting manager keeps, and which it removes.

At start-up the runtime lists every server it owns (Docker: by label; processes: the
registry). `plan` decides, with no I/O: the *adoptable* servers (a known model, running,
its model still `stopped` here, its spec hash the current one) are kept in order (a
model that still holds leases from the previous manager first: requests are in flight
on it; then models.json order) as long as `fits` says the kept ones fit the GPU budget
together (without a budget: the first one only); every other owned server (stopped or
exited, an unknown model, an outdated spec, one that does not fit) is removed, with the
reason. A standby container (Docker: started behind its gate, no server) of a known model
with the current spec hash is left alone (the model's next start releases it); one of an
unknown model or another spec is removed. A server that says it sleeps (a warm model,
``GET /is_sleeping``) takes no GPU memory: it is kept, asleep, while the sleeping ones
fit the host-memory budget. The scheduler applies the plan (`Scheduler.adopt`): it removes through the
runtime and starts health-checking the kept ones as `starting`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from manager.runtime import Instance


@dataclass(frozen=True)
class Candidate:
    """What adoption needs to know of a model in the catalogue."""

    spec_hash: str
    stopped: bool
    """The scheduler has it `stopped` (it is not already being started or used)."""


@dataclass(frozen=True)
class Plan:
    keep: list[Instance] = field(default_factory=list)
    remove: list[tuple[Instance, str]] = field(default_factory=list)
    """Servers to stop and remove, each with why ("unknown model", "exited", ...)."""


def plan(
    owned: Iterable[Instance],
    catalogue: Mapping[str, Candidate],
    *,
    fits: Callable[[Sequence[str]], bool],
    residents: Collection[str] = (),
    leased: Collection[str] = (),
    asleep: Collection[str] = (),
    fits_host: Callable[[Sequence[str]], bool] | None = None,
) -> Plan:
    """Which of `owned` to keep and which to remove. `catalogue` is in models.json order;
    `residents` are the models the scheduler already uses (their servers are never
    removed); `leased` are models with leases in flight, kept before any other; `fits`
    says whether the given models (the residents among them) fit the budget together.
    `asleep` are models whose running server says it sleeps (the warm tier): such a one
    takes no GPU memory, so it is kept while the sleeping ones kept fit the host-memory
    budget together (`fits_host`; None: none is kept)."""
    order = {name: i for i, name in enumerate(catalogue)}
    ordered = sorted(
        owned,
        key=lambda inst: (inst.model not in leased, order.get(inst.model, len(order)), inst.model),
    )
    keep: list[Instance] = []
    remove: list[tuple[Instance, str]] = []
    for inst in ordered:
        known = catalogue.get(inst.model)
        if known is not None and inst.model in residents:
            continue  # never remove a server the scheduler is using
        if inst.standby:  # no server runs: never adopted; kept while it is current
            if known is None or inst.spec_hash != known.spec_hash:
                remove.append((inst, "unknown model" if known is None else "outdated standby"))
            continue
        if inst.model in asleep:
            sleeping = [k.model for k in keep if k.model in asleep]
            if (
                _adoptable(inst, known)
                and fits_host is not None
                and inst.model not in sleeping
                and fits_host([*sleeping, inst.model])
            ):
                keep.append(inst)
                continue
            remove.append((inst, "asleep, no host memory for it" if known else "unknown model"))
            continue
        kept = [*residents, *(k.model for k in keep if k.model not in asleep)]
        if _adoptable(inst, known) and inst.model not in kept and fits([*kept, inst.model]):
            keep.append(inst)
            continue
        if known is None:
            why = "unknown model"
        else:
            why = "extra or outdated" if inst.running else "exited"
        remove.append((inst, why))
    return Plan(keep, remove)


def _adoptable(inst: Instance, known: Candidate | None) -> bool:
    if known is None or not inst.running or not known.stopped:
        return False
    return inst.spec_hash is None or inst.spec_hash == known.spec_hash
