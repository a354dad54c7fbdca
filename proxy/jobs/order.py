"""Which jobs run next: pure functions of what the proxy sees. No I/O.

The store keeps one FIFO per model and owner (the key's name). A free worker first
picks a model (`pick_model`), then whose job on it (`pick_owner`, the fair share
between keys, docs/jobs.md "Fair share between keys"), then that owner's oldest job.

Which model, from the swap planner's point of view (docs/jobs.md, "Order"):

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

from proxy.keys import CLASSES, PriorityClass


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


def _owner_rank(
    owner: str,
    classes: Mapping[str, PriorityClass],
    running: Mapping[str, int],
    served: Mapping[str, int],
) -> tuple[int, int, int, str]:
    return (
        CLASSES.index(classes.get(owner, "normal")),
        running.get(owner, 0),
        served.get(owner, -1),
        owner,
    )


def pick_owner(
    queued: Mapping[str, int],
    *,
    classes: Mapping[str, PriorityClass],
    running: Mapping[str, int],
    served: Mapping[str, int],
) -> str | None:
    """Whose job on a model a free worker takes next, or None (nothing queued).

    `queued`: jobs waiting per owner; `classes`: each owner's priority class (missing:
    ``normal``); `running`: jobs this proxy runs now per owner; `served`: per owner, the
    turn (a counter, higher = later) at which a worker last took one of its jobs.

    The owner of the best class; among those, the one with the fewest jobs running here
    (an equal share of the workers), then the one served least recently (round robin),
    then the smaller name. Within one owner, jobs go first come, first served.
    """
    have = [o for o, n in queued.items() if n > 0]
    if not have:
        return None
    return min(have, key=lambda o: _owner_rank(o, classes, running, served))


def fair_position(
    owner: str,
    place: int,
    queued: Mapping[str, int],
    *,
    classes: Mapping[str, PriorityClass],
    running: Mapping[str, int],
    served: Mapping[str, int],
) -> int:
    """The position (1 = next) of `owner`'s `place`-th queued job in the model's line,
    if workers took jobs by `pick_owner` from now on and no job came or finished:
    how many jobs start before it, plus one. Jobs of a better class that arrive later,
    or a finished job of another key, can move it."""
    left = {o: n for o, n in queued.items() if n > 0}
    left[owner] = max(left.get(owner, 0), place)
    busy, turns = dict(running), dict(served)
    turn = max(turns.values(), default=0)
    mine = 0
    for position in range(1, sum(left.values()) + 1):
        who = pick_owner(left, classes=classes, running=busy, served=turns)
        assert who is not None
        if who == owner:
            mine += 1
            if mine == place:
                return position
        left[who] -= 1
        busy[who] = busy.get(who, 0) + 1
        turn += 1
        turns[who] = turn
    return place  # unreachable: `owner` has `place` jobs in `left`
