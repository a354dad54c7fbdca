"""The GPU PC's idle suspend decision (manager/idle.py `quiet_reason`)."""

from __future__ import annotations

from pathlib import Path

from manager.idle import quiet_reason, token_from


def test_quiet_only_with_nothing_in_use_moving_or_pinned_resident() -> None:
    idle = {"id": "a", "state": "ready", "in_flight": 0, "waiting": 0}
    assert quiet_reason([idle, {"id": "b", "state": "stopped"}]) is None
    assert quiet_reason([{**idle, "in_flight": 1}]) == "a is in use"
    assert quiet_reason([{**idle, "waiting": 2}]) == "a is in use"
    assert quiet_reason([{**idle, "state": "starting"}]) == "a is starting"
    assert quiet_reason([{**idle, "pinned": True}]) == "a is pinned and resident"
    assert quiet_reason([{**idle, "pinned": True, "state": "stopped"}]) is None


def test_the_token_comes_from_the_env_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# x\nHOMELAB_ADVERTISE_HOST=h\nHOMELAB_MANAGER_TOKEN=abc\n")
    assert token_from(env) == "abc"
    env.write_text("# just the token\nxyz\n")
    assert token_from(env) == "xyz"
