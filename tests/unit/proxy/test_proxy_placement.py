"""The placement policy (proxy/placement.py): examples of each rank, and properties that
hold for any hosts (hypothesis)."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.placement import HostView, Other, Placement, place, rank, stops_nothing

STATES = [
    "ready",
    "starting",
    "waking",
    "sleeping",
    "falling_asleep",
    "stopping",
    "stopped",
    "failed",
    "odd-new",
]
"""The manager's states, the warm-models ones, and one this module does not know."""


def _host(name: str, state: str | None, **kw: object) -> HostView:
    return HostView(name=name, state=state, **kw)  # type: ignore[arg-type]


BUSY = (Other("big", "ready", 20000, in_flight=3),)
IDLE = (Other("small", "ready", 4000),)


def test_each_rank_in_the_documented_order() -> None:
    hosts = [
        _host("evict", "stopped", others=BUSY),
        _host("free", "stopped"),
        _host("warm", "sleeping", others=BUSY),
        _host("loading", "starting", others=BUSY),
        _host("ready", "ready", others=BUSY, queue=50),
    ]
    assert place(hosts).order == ("ready", "loading", "warm", "free", "evict")


def test_a_warm_model_ranks_between_loading_and_a_start_that_stops_nothing() -> None:
    assert place([_host("a", "stopped"), _host("b", "waking")]).order == ("b", "a")
    assert place([_host("a", "starting"), _host("b", "waking")]).order == ("a", "b")


def test_a_start_within_the_budget_stops_nothing() -> None:
    fits = _host("fits", "stopped", need_mib=4000, budget_mib=24000, others=IDLE)
    full = _host("full", "stopped", need_mib=24000, budget_mib=24000, others=IDLE)
    unknown = _host("unknown", "stopped", need_mib=4000, others=IDLE)
    assert stops_nothing(fits) and not stops_nothing(full) and not stops_nothing(unknown)


def test_the_cheapest_eviction_wins_then_the_shortest_queue() -> None:
    hosts = [
        _host("a", "stopped", others=BUSY),
        _host("b", "stopped", others=IDLE, queue=9),
        _host("c", "stopped", others=IDLE, queue=1),
    ]
    assert place(hosts).order == ("c", "b", "a")
    pinned = (Other("p", "ready", 1000, pinned=True),)
    assert (
        place([_host("p", "stopped", others=pinned), _host("q", "stopped", others=IDLE)]).order[0]
        == "q"
    )


def test_down_hosts_are_skipped_until_due_then_tried_last() -> None:
    hosts = [
        _host("down", "ready", up=False),
        _host("due", "ready", up=False, retry_due=True),
        _host("up", "stopped", others=BUSY),
    ]
    assert place(hosts).order == ("up", "due")


def test_a_sleeping_host_is_woken_not_tried() -> None:
    hosts = [_host("sleepy", "stopped", up=False, asleep=True), _host("other", None)]
    assert place(hosts) == Placement(order=(), wake=("sleepy",))


def test_an_unknown_state_needs_a_start_and_an_unknown_other_holds_memory() -> None:
    assert rank(_host("a", "odd-new")) == rank(_host("b", "stopped"))
    assert not stops_nothing(_host("a", "stopped", others=(Other("x", "odd-new"),)))


# -- properties ----------------------------------------------------------------------------

others = st.lists(
    st.builds(
        Other,
        name=st.sampled_from(["o1", "o2", "o3"]),
        state=st.sampled_from(STATES),
        gpu_memory_mib=st.one_of(st.none(), st.integers(0, 48000)),
        in_flight=st.integers(0, 5),
        pinned=st.booleans(),
    ),
    max_size=3,
).map(tuple)


@st.composite
def fleets(draw: st.DrawFn) -> list[HostView]:
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True))
    out = []
    for name in names:
        up = draw(st.booleans())
        out.append(
            HostView(
                name=name,
                state=draw(st.one_of(st.none(), st.sampled_from(STATES))),
                up=up,
                retry_due=not up and draw(st.booleans()),
                asleep=not up and draw(st.booleans()),
                queue=draw(st.integers(0, 20)),
                need_mib=draw(st.one_of(st.none(), st.integers(0, 48000))),
                budget_mib=draw(st.one_of(st.none(), st.integers(0, 80000))),
                others=draw(others),
            )
        )
    return out


@given(fleets())
@settings(max_examples=300)
def test_only_hosts_that_serve_the_model_each_once(hosts: list[HostView]) -> None:
    placement = place(hosts)
    chosen = [*placement.order, *placement.wake]
    assert len(chosen) == len(set(chosen))
    serving = {h.name for h in hosts if h.state is not None}
    assert set(chosen) <= serving
    by_name = {h.name: h for h in hosts}
    for name in placement.order:  # up, or down and due; never asleep
        h = by_name[name]
        assert h.up or (h.retry_due and not h.asleep)
    for name in placement.wake:
        assert by_name[name].asleep and not by_name[name].up
    # every host that serves it and is up is in the order
    assert {h.name for h in hosts if h.state is not None and h.up} <= set(placement.order)


@given(fleets())
@settings(max_examples=300)
def test_up_hosts_come_before_down_ones_and_a_ready_one_first(hosts: list[HostView]) -> None:
    order = place(hosts).order
    by_name = {h.name: h for h in hosts}
    ups = [by_name[n].up for n in order]
    assert ups == sorted(ups, reverse=True)
    if any(h.up and h.state == "ready" for h in hosts):
        assert by_name[order[0]].state == "ready"


@given(fleets(), st.randoms(use_true_random=False))
@settings(max_examples=200)
def test_the_order_does_not_depend_on_the_input_order(
    hosts: list[HostView], rnd: random.Random
) -> None:
    shuffled = list(hosts)
    rnd.shuffle(shuffled)
    assert place(shuffled) == place(hosts)


def _moved(hosts: list[HostView], data: st.DataObject, **change: object) -> tuple[int, int] | None:
    """Where one host that is up and serves the model stands, before and after `change` to
    it alone (None: no such host)."""
    up = [h for h in hosts if h.up and h.state is not None]
    if not up:
        return None
    target = data.draw(st.sampled_from(up))
    changed = [dataclasses.replace(h, **change) if h is target else h for h in hosts]  # type: ignore[arg-type]
    return place(hosts).order.index(target.name), place(changed).order.index(target.name)


@given(fleets(), st.data())
@settings(max_examples=300)
def test_a_model_becoming_ready_never_moves_its_host_later(
    hosts: list[HostView], data: st.DataObject
) -> None:
    moved = _moved(hosts, data, state="ready")
    assert moved is None or moved[1] <= moved[0]


@given(fleets(), st.data())
@settings(max_examples=300)
def test_a_longer_queue_never_moves_a_host_earlier(
    hosts: list[HostView], data: st.DataObject
) -> None:
    moved = _moved(hosts, data, queue=max(h.queue for h in hosts) + 5)
    assert moved is None or moved[1] >= moved[0]
