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


def test_the_engine_clock_is_read_and_its_offset_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_events, "_engine_offset", None)
    engine = Engine(skew=-7.5)
    assert engine_events.engine_time(engine) - time.time() == pytest.approx(-7.5, abs=0.2)
    assert engine_events.engine_time(engine) - time.time() == pytest.approx(-7.5, abs=0.2)
    assert engine.calls == 1, "read once, then kept for a while"


def test_an_engine_that_does_not_say_means_our_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_events, "_engine_offset", None)

    class Mute:
        def info(self) -> dict:
            return {"SystemTime": "not a time"}

    assert engine_events.engine_time(Mute()) == pytest.approx(time.time(), abs=0.2)
