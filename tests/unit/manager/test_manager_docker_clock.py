"""The Docker runtime waits for a container's `die` event on the engine's clock, not
ours: Docker Desktop's VM clock can drift by seconds (after the host sleeps), and an
event stream whose `since` lies after the event would miss it and wait out the grace."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

pytest.importorskip("docker", reason="the docker SDK is the manager extra")

from manager import engine_events  # noqa: E402


class Engine:
    """A docker client whose `info()` reports a clock `skew` seconds off ours."""

    def __init__(self, skew: float) -> None:
        self.skew = skew
        self.calls = 0

    def info(self) -> dict:
        self.calls += 1
        at = datetime.fromtimestamp(time.time() + self.skew, tz=UTC)
        return {"SystemTime": at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"}


NOW = 1_800_000_000.0


def test_the_engine_clock_is_read_and_its_offset_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_events, "_engine_offset", None)
    monkeypatch.setattr(time, "time", lambda: NOW)  # ours stands still: no load can move it
    engine = Engine(skew=-7.5)
    assert engine_events.engine_time(engine) == pytest.approx(NOW - 7.5, abs=1e-3)
    assert engine_events.engine_time(engine) == pytest.approx(NOW - 7.5, abs=1e-3)
    assert engine.calls == 1, "read once, then kept for a while"


def test_an_engine_that_does_not_say_means_our_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_events, "_engine_offset", None)

    class Mute:
        def info(self) -> dict:
            return {"SystemTime": "not a time"}

    monkeypatch.setattr(time, "time", lambda: NOW)
    assert engine_events.engine_time(Mute()) == NOW
