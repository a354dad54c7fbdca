"""Adoption: which model servers a starting manager keeps, and which it removes.

At start-up the runtime lists every server it owns (Docker: by label; processes: the
registry). `plan` decides, with no I/O: the first *adoptable* server in models.json
order (a model that still holds leases from the previous manager first: requests are
in flight on it) is kept (a known model, running, its model still `stopped` here and nothing
resident yet, its spec hash the current one); every other owned server (stopped or
exited, an unknown model, an outdated spec, an extra one) is removed, with the reason.
The scheduler applies the plan (`Scheduler.adopt`): it removes through the runtime
and starts health-checking the kept one as `starting`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
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
    keep: Instance | None = None
    remove: list[tuple[Instance, str]] = field(default_factory=list)
    """Servers to stop and remove, each with why ("unknown model", "exited", ...)."""


def plan(
    owned: Iterable[Instance],
    catalogue: Mapping[str, Candidate],
    *,
    resident: str | None = None,
    leased: Collection[str] = (),
) -> Plan:
    """Which of `owned` to keep and which to remove. `catalogue` is in models.json order;
    `resident` is the model the scheduler already uses (its server is never removed);
    `leased` are models with leases in flight, kept before any other."""
    order = {name: i for i, name in enumerate(catalogue)}
    ordered = sorted(
        owned,
        key=lambda inst: (inst.model not in leased, order.get(inst.model, len(order)), inst.model),
    )
    keep: Instance | None = None
    remove: list[tuple[Instance, str]] = []
    for inst in ordered:
        known = catalogue.get(inst.model)
        if keep is None and resident is None and _adoptable(inst, known):
            keep = inst
            continue
        if known is not None and resident == inst.model:
            continue  # never remove the server the scheduler is using
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
