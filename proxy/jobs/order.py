"""Which model's jobs run next: a pure function of what the proxy sees. No I/O.

The broker keeps one FIFO per model; *which* FIFO a worker drains is decided here,
from the swap planner's point of view (docs/jobs.md, "Order"):

1. Interactive requests come first. While an interactive request of this proxy waits
   for model B, no job for any other model starts (jobs already running finish): the
   manager then sees A's leases drain and swaps to B without jobs competing. Jobs
   for B itself may run, they ride on the same swap.
2. While this proxy runs jobs for model M, only M's jobs start, and those of other
   resident models (they run beside M with no swap): a job for a model that is not
   resident would queue at the manager behind them and force a swap back and forth.
3. Jobs for a resident model (ready or starting; several may fit the GPU together)
   go first: no swap.
4. Otherwise keep draining the model the workers drained last while it has jobs
   (grouped by model: 200 jobs over two models cost one or two swaps, not a hundred).
5. Otherwise the model whose oldest queued job is oldest (FIFO across models, the
   manager's own rule); ties go to the smaller name.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def pick_model(
    queued: Mapping[str, int],
    *,
    residents: Collection[str],
    interactive_waiting: Mapping[str, int],
    last: str | None,
    running: Mapping[str, int] | None = None,
    oldest: Mapping[str, float] | None = None,
) -> str | None:
    """The model whose queue a free worker should take its next job from, or None (wait).

    `queued`: jobs waiting per model; `residents`: the models that hold the GPU (or are
    starting); `interactive_waiting`: interactive requests of this proxy
    waiting for a lease, per model; `last`: the model the workers drained last;
    `running`: jobs this proxy runs now, per model; `oldest`: per model, the creation time of its oldest queued job (for rule 4).
    """
    have = {m for m, n in queued.items() if n > 0}
    if not have:
        return None
    wanted = {m for m, n in interactive_waiting.items() if n > 0}
    if wanted:
        usable = have & wanted
        if not usable:
            return None
        loaded = usable & set(residents)
        if loaded:
            return min(loaded)
        have = usable
    else:
        busy = {m for m, n in (running or {}).items() if n > 0}
        if busy:
            usable = have & busy or have & set(residents)
            return min(usable) if usable else None
    loaded = have & set(residents)
    if loaded:
        return last if last in loaded else min(loaded)
    if last in have:
        return last
    ages = oldest or {}
    return min(have, key=lambda m: (ages.get(m, float("inf")), m))
