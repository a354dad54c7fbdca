"""`manager.adoption.plan`: which owned servers a starting manager keeps (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

from manager.adoption import Candidate, plan
from manager.runtime import Instance

CATALOGUE = {
    "alpha": Candidate("h-alpha", stopped=True),
    "beta": Candidate("h-beta", stopped=True),
    "gamma": Candidate("h-gamma", stopped=True),
}


def alone(models: Sequence[str]) -> bool:
    """No budget: one model at a time."""
    return len(set(models)) <= 1


def test_the_first_running_current_server_in_catalogue_order_is_kept() -> None:
    owned = [
        Instance("beta", running=True, spec_hash="h-beta"),
        Instance("alpha", running=True, spec_hash="h-alpha"),
    ]
    decided = plan(owned, CATALOGUE, fits=alone)
    assert decided.keep == [owned[1]]
    assert decided.remove == [(owned[0], "extra or outdated")]


def test_exited_outdated_and_unknown_servers_are_removed_with_the_reason() -> None:
    owned = [
        Instance("ghost", running=True),
        Instance("alpha", running=False, exit_code=1, spec_hash="h-alpha"),
        Instance("beta", running=True, spec_hash="old"),
    ]
    decided = plan(owned, CATALOGUE, fits=alone)
    assert decided.keep == []
    assert [(i.model, why) for i, why in decided.remove] == [
        ("alpha", "exited"),
        ("beta", "extra or outdated"),
        ("ghost", "unknown model"),
    ]


def test_nothing_is_kept_while_a_model_is_resident_and_its_server_is_never_removed() -> None:
    owned = [
        Instance("alpha", running=True, spec_hash="h-alpha"),
        Instance("beta", running=True, spec_hash="h-beta"),
    ]
    decided = plan(owned, CATALOGUE, fits=alone, residents=["alpha"])
    assert decided.keep == []
    assert decided.remove == [(owned[1], "extra or outdated")]


def test_a_model_that_is_not_stopped_is_not_adopted_and_no_hash_is_accepted() -> None:
    busy = {**CATALOGUE, "alpha": Candidate("h-alpha", stopped=False)}
    owned = [Instance("alpha", running=True), Instance("beta", running=True)]
    decided = plan(owned, busy, fits=alone)
    assert decided.keep == [owned[1]]  # no recorded hash (process registry of old): adopted


def test_a_server_with_leases_in_flight_is_kept_before_catalogue_order() -> None:
    """A restarted manager keeps the model its kept leases are on (requests are in flight)."""
    owned = [
        Instance("alpha", running=True, spec_hash="h-alpha"),
        Instance("beta", running=True, spec_hash="h-beta"),
    ]
    decided = plan(owned, CATALOGUE, fits=alone, leased={"beta"})
    assert decided.keep == [owned[1]]
    assert decided.remove == [(owned[0], "extra or outdated")]


def test_with_a_budget_every_server_that_fits_is_kept() -> None:
    """alpha (10) and beta (8) fit a budget of 20 together; gamma (5) would not."""
    costs = {"alpha": 10, "beta": 8, "gamma": 5}
    owned = [
        Instance("gamma", running=True, spec_hash="h-gamma"),
        Instance("beta", running=True, spec_hash="h-beta"),
        Instance("alpha", running=True, spec_hash="h-alpha"),
    ]
    decided = plan(owned, CATALOGUE, fits=lambda names: sum(costs[n] for n in names) <= 20)
    assert [i.model for i in decided.keep] == ["alpha", "beta"]
    assert decided.remove == [(owned[0], "extra or outdated")]


def test_a_current_standby_container_is_left_alone_and_an_outdated_one_is_removed() -> None:
    owned = [
        Instance("alpha", running=False, spec_hash="h-alpha", standby=True),
        Instance("beta", running=False, spec_hash="old", standby=True),
        Instance("ghost", running=False, standby=True),
        Instance("gamma", running=True, spec_hash="h-gamma"),
    ]
    decided = plan(owned, CATALOGUE, fits=alone)
    assert decided.keep == [owned[3]], "a standby container is never adopted as a server"
    assert [(i.model, why) for i, why in decided.remove] == [
        ("beta", "outdated standby"),
        ("ghost", "unknown model"),
    ]
