"""`manager.adoption.plan`: which owned servers a starting manager keeps (pure, no I/O)."""

from __future__ import annotations

from manager.adoption import Candidate, plan
from manager.runtime import Instance

CATALOGUE = {
    "alpha": Candidate("h-alpha", stopped=True),
    "beta": Candidate("h-beta", stopped=True),
}


def test_the_first_running_current_server_in_catalogue_order_is_kept() -> None:
    owned = [
        Instance("beta", running=True, spec_hash="h-beta"),
        Instance("alpha", running=True, spec_hash="h-alpha"),
    ]
    decided = plan(owned, CATALOGUE)
    assert decided.keep == owned[1]
    assert decided.remove == [(owned[0], "extra or outdated")]


def test_exited_outdated_and_unknown_servers_are_removed_with_the_reason() -> None:
    owned = [
        Instance("ghost", running=True),
        Instance("alpha", running=False, exit_code=1, spec_hash="h-alpha"),
        Instance("beta", running=True, spec_hash="old"),
    ]
    decided = plan(owned, CATALOGUE)
    assert decided.keep is None
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
    decided = plan(owned, CATALOGUE, resident="alpha")
    assert decided.keep is None
    assert decided.remove == [(owned[1], "extra or outdated")]


def test_a_model_that_is_not_stopped_is_not_adopted_and_no_hash_is_accepted() -> None:
    busy = {**CATALOGUE, "alpha": Candidate("h-alpha", stopped=False)}
    owned = [Instance("alpha", running=True), Instance("beta", running=True)]
    decided = plan(owned, busy)
    assert decided.keep == owned[1]  # no recorded hash (process registry of old): adopted


def test_a_server_with_leases_in_flight_is_kept_before_catalogue_order() -> None:
    """A restarted manager keeps the model its kept leases are on (requests are in flight)."""
    owned = [
        Instance("alpha", running=True, spec_hash="h-alpha"),
        Instance("beta", running=True, spec_hash="h-beta"),
    ]
    decided = plan(owned, CATALOGUE, leased={"beta"})
    assert decided.keep == owned[1]
    assert decided.remove == [(owned[0], "extra or outdated")]
