"""The readiness poll's shape: a short first delay, then an interval that grows to a low cap.

The probe's HTTP look (`check`) is replaced by a scripted one so that what is
tested is the loop's timing decisions, recorded from the `asyncio.sleep` calls it
makes (the real sleeps are shortened to nothing)."""

from __future__ import annotations

import asyncio

from manager_fakes import FakeRuntime, catalogue

from manager.health import HttpReadinessProbe, Verdict


class ScriptedProbe(HttpReadinessProbe):
    def __init__(self, loading_rounds: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.left = loading_rounds

    async def check(self, name, spec, base_url, *, within=None, api_key=None) -> Verdict:
        if self.left > 0:
            self.left -= 1
            return Verdict("loading", "not answering yet (ConnectError)")
        return Verdict("ready", "ready")


async def _intervals(monkeypatch, probe: HttpReadinessProbe) -> list[float]:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def record(delay, *args, **kwargs):
        slept.append(delay)
        await real_sleep(0)

    spec = catalogue().models["alpha"]
    runtime = FakeRuntime()
    await runtime.start("alpha", spec)
    monkeypatch.setattr(asyncio, "sleep", record)
    try:
        await probe.wait_ready("alpha", spec, runtime)
    finally:
        monkeypatch.undo()
        await probe.aclose()
    return slept


async def test_default_poll_starts_at_a_tenth_of_a_second_and_never_exceeds_half_a_second(
    monkeypatch,
):
    slept = await _intervals(monkeypatch, ScriptedProbe(loading_rounds=30))
    assert len(slept) == 31  # the first delay, then one wait per loading answer
    assert slept[0] == 0.1
    assert all(later >= earlier for earlier, later in zip(slept, slept[1:], strict=False))
    assert max(slept) == 0.5
    assert slept[-1] == 0.5


async def test_the_cap_is_a_constructor_knob(monkeypatch):
    slept = await _intervals(
        monkeypatch, ScriptedProbe(loading_rounds=20, first_delay=0.2, max_interval=1.0)
    )
    assert slept[0] == 0.2
    assert max(slept) == 1.0
