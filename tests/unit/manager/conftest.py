"""Fixtures of the manager's unit tier: a scheduler over fakes, with a hand-moved clock."""

from __future__ import annotations

import pytest
from manager_fakes import FakeClock, FakeProbe, FakeRuntime, GpuCheck, catalogue

from manager.scheduler import Scheduler, SchedulerConfig


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def probe() -> FakeProbe:
    return FakeProbe()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gpu() -> GpuCheck:
    return GpuCheck()


@pytest.fixture
def config() -> SchedulerConfig:
    return SchedulerConfig(
        queue_limit=16, queue_timeout=300, batch_bound=3, lease_ttl=120, stop_backoff=0
    )


@pytest.fixture
async def sched(runtime, probe, clock, config, gpu):
    scheduler = Scheduler(catalogue(), runtime, probe, config, clock=clock, gpu_released=gpu)
    yield scheduler
    await scheduler.close()
