"""The scheduler over a fake runtime and probe: starts, swaps, leases, queues, failures."""

from __future__ import annotations

import asyncio
import math

import pytest
from manager_fakes import FakeClock, FakeProbe, FakeRuntime, catalogue, until

from manager.errors import (
    BusyError,
    GpuMemoryNotReleased,
    LeaseNotFound,
    RuntimeFailure,
    StartFailed,
    UnknownModelError,
)
from manager.probe import ReadinessProbe
from manager.runtime import ContainerRuntime
from manager.scheduler import Scheduler, SchedulerConfig
from manager.state import ModelState
from wire.events import ContentionEvent, StateEvent, SwapEvent


def test_fakes_satisfy_the_real_protocols(runtime, probe):
    assert isinstance(runtime, ContainerRuntime)
    assert isinstance(probe, ReadinessProbe)


async def test_cold_start_grants_a_lease_once_ready(sched, runtime):
    lease = await sched.acquire("alpha")
    assert (lease.model, lease.type, lease.base_url) == ("alpha", "text", "http://127.0.0.1:18001")
    assert lease.ttl == sched.config.lease_ttl
    assert runtime.calls == [("start", "alpha")]
    assert sched.state("alpha") is ModelState.READY
    status = sched.model_status("alpha")
    assert (status.in_flight, status.waiting) == (1, 0)
    assert status.last_used is not None


async def test_advertise_host_goes_into_the_lease(runtime, probe):
    cfg = SchedulerConfig(advertise_host="192.168.1.20")
    sched = Scheduler(catalogue(), runtime, probe, cfg)
    try:
        lease = await sched.acquire("beta")
        assert lease.base_url == "http://192.168.1.20:18002"
    finally:
        await sched.close()


async def test_unknown_model_lists_the_known_ones(sched):
    with pytest.raises(UnknownModelError) as info:
        await sched.acquire("gamma")
    assert "alpha, beta, pix" in str(info.value)


async def test_requests_for_a_starting_model_share_one_start(sched, runtime, probe):
    probe.hold("alpha")
    tasks = [asyncio.create_task(sched.acquire("alpha")) for _ in range(5)]
    await until(lambda: "alpha" in probe.waiting, "start to begin")
    assert sched.model_status("alpha").waiting == 5
    assert sched.state("alpha") is ModelState.STARTING
    probe.release("alpha")
    leases = await asyncio.gather(*tasks)
    assert len({lease.lease_id for lease in leases}) == 5
    assert runtime.calls == [("start", "alpha")]
    assert sched.swaps == 1


async def test_swap_stops_the_resident_before_starting_the_next(sched, runtime):
    lease = await sched.acquire("alpha")
    sched.release(lease.lease_id)
    await sched.acquire("beta")
    assert runtime.calls == [("start", "alpha"), ("stop", "alpha"), ("start", "beta")]
    assert sched.state("alpha") is ModelState.STOPPED
    assert sched.state("beta") is ModelState.READY
    assert runtime.max_running == 1


async def test_no_stop_while_a_lease_is_held(sched, runtime):
    lease = await sched.acquire("alpha")
    other = asyncio.create_task(sched.acquire("beta"))
    await until(lambda: sched.model_status("beta").waiting == 1, "beta to queue")
    for _ in range(20):
        await asyncio.sleep(0)
    assert ("stop", "alpha") not in runtime.calls
    assert sched.state("alpha") is ModelState.READY
    assert not other.done()
    sched.release(lease.lease_id)
    beta = await other
    assert beta.model == "beta"
    assert runtime.calls == [("start", "alpha"), ("stop", "alpha"), ("start", "beta")]


async def test_resident_keeps_serving_up_to_the_batch_bound_while_others_wait(sched, runtime):
    held = await sched.acquire("alpha")
    # As if taken by a client that shares nothing (the bound is then exact).
    held.grant = held.grant.model_copy(update={"max_uses": 1})
    beta = asyncio.create_task(sched.acquire("beta"))
    await until(lambda: sched.model_status("beta").waiting == 1, "beta to queue")
    extra = [await sched.acquire("alpha") for _ in range(sched.config.batch_bound)]
    assert len(extra) == 3
    assert [lease.max_uses for lease in extra] == [1, 1, 1], "contention: no sharing"
    queued = asyncio.create_task(sched.acquire("alpha"))
    await until(lambda: sched.model_status("alpha").waiting == 1, "the 4th alpha request to queue")
    for lease in [held, *extra]:
        sched.release(lease.lease_id)
    await beta
    assert not queued.done()
    assert sched.residents == ["beta"]
    sched.release((await _only_lease(sched, "beta")).lease_id)
    again = await queued
    assert again.model == "alpha"


async def test_a_lease_granted_without_contention_is_unbounded_for_batch_bound_at_once(sched):
    lease = await sched.acquire("alpha")
    assert lease.max_uses == 0, "shared until contention begins"
    assert lease.max_concurrent == sched.config.batch_bound == 3
    assert sched.leases.uses("alpha") == 3, "counts its width against max_in_flight"
    assert not sched.contended("alpha")


async def test_contention_is_published_and_told_in_renewals(sched):
    sub = sched.events.subscribe()
    held = await sched.acquire("alpha")
    beta = asyncio.create_task(sched.acquire("beta"))
    await until(lambda: sched.model_status("beta").waiting == 1, "beta to queue")
    assert sched.contended("alpha") and not sched.contended("beta")
    events = []
    while (event := await sub.next(timeout=0)) is not None:
        events.append(event)
    contention = [e for e in events if isinstance(e, ContentionEvent)]
    assert [e.models for e in contention] == [["alpha"]], "once, when it began"
    # The unbounded lease may admit up to batch_bound more at the proxy before it hears:
    # the bound is spent, so alpha's next request waits behind beta.
    queued = asyncio.create_task(sched.acquire("alpha"))
    await until(lambda: sched.model_status("alpha").waiting == 1, "alpha's next request to queue")
    sched.release(held.lease_id)
    assert (await beta).model == "beta"
    assert sched.contended("beta"), "alpha waits for beta's memory now"
    assert not sched.contended("alpha"), "not resident"
    sched.release((await _only_lease(sched, "beta")).lease_id)
    assert (await queued).model == "alpha"
    sub.close()


async def test_a_lease_granted_while_another_model_waits_is_for_one_request(sched, probe):
    held = await sched.acquire("alpha")
    # As if granted bounded: it may admit 2 more requests at the proxy.
    held.grant = held.grant.model_copy(update={"max_uses": 3})
    beta = asyncio.create_task(sched.acquire("beta"))
    await until(lambda: sched.model_status("beta").waiting == 1, "beta to queue")
    # `held` may still admit 2 more requests at the proxy: they count against the bound,
    # so only one more lease is granted before beta's turn (3 requests in all).
    granted = await sched.acquire("alpha")
    assert (granted.max_uses, granted.max_concurrent) == (1, 1)
    queued = asyncio.create_task(sched.acquire("alpha"))
    await until(lambda: sched.model_status("alpha").waiting == 1, "the next alpha request to queue")
    sched.release(held.lease_id)
    sched.release(granted.lease_id)
    assert (await beta).model == "beta"
    assert not queued.done()
    sched.release((await _only_lease(sched, "beta")).lease_id)
    assert (await queued).model == "alpha"


async def test_when_contention_ends_leases_are_shareable_again(sched):
    held = await sched.acquire("alpha")
    beta = asyncio.create_task(sched.acquire("beta"))
    await until(lambda: sched.model_status("beta").waiting == 1, "beta to queue")
    sched.release(held.lease_id)
    lease = await beta
    assert (lease.max_uses, lease.max_concurrent) == (0, 3)
    sched.release(lease.lease_id)


async def _only_lease(sched, model):
    leases = sched.leases.of(model)
    assert len(leases) == 1
    return leases[0]


async def test_failed_start_fails_all_waiters_and_the_next_request_retries(sched, runtime, probe):
    probe.hold("alpha")
    probe.fail_next("alpha", "Engine core initialization failed", exit_code=3, logs="a\nb\nboom")
    tasks = [asyncio.create_task(sched.acquire("alpha")) for _ in range(3)]
    await until(lambda: "alpha" in probe.waiting, "start to begin")
    probe.release("alpha")
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, StartFailed) for r in results), results
    assert {r.exit_code for r in results} == {3}
    assert all("boom" in r.logs for r in results)
    assert sched.state("alpha") is ModelState.FAILED
    assert "Engine core initialization failed" in sched.model_status("alpha").last_error
    assert "exit code 3" in sched.model_status("alpha").last_error

    lease = await sched.acquire("alpha")
    assert lease.model == "alpha"
    assert runtime.calls == [("start", "alpha"), ("stop", "alpha"), ("start", "alpha")]
    assert sched.state("alpha") is ModelState.READY


async def test_runtime_failure_at_launch_is_a_start_failure(sched, runtime):
    runtime.start_failures["alpha"] = RuntimeFailure("image homelab/x:1 not found")
    with pytest.raises(StartFailed, match="image homelab/x:1 not found"):
        await sched.acquire("alpha")
    assert sched.state("alpha") is ModelState.FAILED


async def test_a_failed_model_is_cleaned_up_before_another_starts(sched, runtime, probe):
    probe.fail_next("alpha")
    with pytest.raises(StartFailed):
        await sched.acquire("alpha")
    await sched.acquire("beta")
    assert runtime.calls == [("start", "alpha"), ("stop", "alpha"), ("start", "beta")]
    assert sched.state("alpha") is ModelState.STOPPED


@pytest.mark.parametrize("bound", [1, 3, 8])
async def test_fifty_concurrent_requests_over_two_models_swap_within_the_bound(
    runtime, probe, bound
):
    clock = FakeClock(step=0.001)  # every read is later: a strict arrival order
    cfg = SchedulerConfig(batch_bound=bound, queue_limit=100, stop_backoff=0)
    sched = Scheduler(catalogue(), runtime, probe, cfg, clock=clock)
    swaps: list[SwapEvent] = []
    sub = sched.events.subscribe(queue_size=1000)

    async def client(model: str) -> str:
        lease = await sched.acquire(model)
        await asyncio.sleep(0)
        sched.release(lease.lease_id)
        return lease.model

    try:
        models = ["alpha" if i % 2 == 0 else "beta" for i in range(50)]
        results = await asyncio.gather(*(client(m) for m in models))
    finally:
        await sched.close()
    assert results == models
    async for event in sub:
        if isinstance(event, SwapEvent):
            swaps.append(event)
    assert len(swaps) == sched.swaps
    # Every turn but a model's last grants its waiters ahead of the others plus `bound` more.
    assert 2 <= sched.swaps <= math.ceil(50 / (bound + 1)) + 1
    assert runtime.max_running == 1


async def test_without_contention_one_swap_per_model(runtime, probe):
    sched = Scheduler(catalogue(), runtime, probe, SchedulerConfig(batch_bound=100))
    try:
        results = await asyncio.gather(*(sched.acquire("alpha") for _ in range(25)))
        for lease in results:
            sched.release(lease.lease_id)
        assert sched.swaps == 1
    finally:
        await sched.close()


async def test_queue_limit_gives_busy_with_retry_after(runtime, probe):
    sched = Scheduler(catalogue(), runtime, probe, SchedulerConfig(queue_limit=2))
    try:
        probe.hold("alpha")
        waiting = [asyncio.create_task(sched.acquire("alpha")) for _ in range(2)]
        await until(lambda: sched.waiting_count() == 2, "two waiters")
        with pytest.raises(BusyError) as info:
            await sched.acquire("beta")
        assert info.value.retry_after >= 1
        assert sched.waiting_count() == 2
        probe.release("alpha")
        assert [lease.model for lease in await asyncio.gather(*waiting)] == ["alpha", "alpha"]
    finally:
        await sched.close()


async def test_queue_timeout_gives_busy_and_leaves_the_queue(sched, probe, runtime):
    probe.hold("alpha")
    with pytest.raises(BusyError, match="not ready within") as info:
        await sched.acquire("alpha", timeout=0.01)
    assert info.value.retry_after >= 1
    assert sched.waiting_count() == 0
    assert sched.state("alpha") is ModelState.STARTING  # the start goes on
    probe.release("alpha")
    await until(lambda: sched.state("alpha") is ModelState.READY, "alpha ready")
    assert (await sched.acquire("alpha")).model == "alpha"


async def test_a_cancelled_request_leaves_the_queue(sched, probe):
    probe.hold("alpha")
    task = asyncio.create_task(sched.acquire("alpha"))
    await until(lambda: sched.waiting_count() == 1, "the waiter")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sched.waiting_count() == 0
    probe.release("alpha")
    await until(lambda: sched.state("alpha") is ModelState.READY, "alpha ready")
    assert sched.model_status("alpha").in_flight == 0


async def test_lease_expires_after_ttl_unless_renewed(sched, clock):
    lease = await sched.acquire("alpha")
    clock.advance(100)
    assert sched.renew(lease.lease_id).lease_id == lease.lease_id
    clock.advance(100)  # 200 s after the grant, 100 s after the renewal: alive
    await sched.tick()
    assert sched.model_status("alpha").in_flight == 1
    clock.advance(21)
    await sched.tick()
    assert sched.model_status("alpha").in_flight == 0
    with pytest.raises(LeaseNotFound):
        sched.renew(lease.lease_id)
    with pytest.raises(LeaseNotFound):
        sched.release(lease.lease_id)


async def test_an_expired_lease_no_longer_pins_the_model(sched, clock, runtime):
    await sched.acquire("alpha")  # never released: a crashed proxy
    beta = asyncio.create_task(sched.acquire("beta"))
    await until(lambda: sched.waiting_count() == 1, "beta to queue")
    clock.advance(sched.config.lease_ttl + 1)
    await sched.tick()
    assert (await beta).model == "beta"
    assert runtime.calls[-2:] == [("stop", "alpha"), ("start", "beta")]


async def test_release_twice_is_lease_not_found(sched):
    lease = await sched.acquire("alpha")
    sched.release(lease.lease_id)
    with pytest.raises(LeaseNotFound):
        sched.release(lease.lease_id)


async def test_idle_ttl_stops_an_idle_model(sched, clock, runtime):
    lease = await sched.acquire("beta")  # beta: idle_ttl 60
    sched.release(lease.lease_id)
    clock.advance(59)
    await sched.tick()
    assert sched.state("beta") is ModelState.READY
    clock.advance(2)
    await sched.tick()
    await until(lambda: sched.state("beta") is ModelState.STOPPED, "idle stop")
    assert runtime.calls[-1] == ("stop", "beta")
    assert sched.residents == []


async def test_idle_ttl_waits_for_leases(sched, clock):
    await sched.acquire("beta")
    clock.advance(3600)
    await sched.tick()
    assert sched.state("beta") is ModelState.READY


async def test_a_model_without_idle_ttl_stays(sched, clock):
    sched.release((await sched.acquire("alpha")).lease_id)
    clock.advance(10 * 24 * 3600)
    await sched.tick()
    assert sched.state("alpha") is ModelState.READY


async def test_a_server_that_dies_while_ready_goes_to_failed_and_restarts_on_demand(
    sched, runtime, probe
):
    sched.release((await sched.acquire("alpha")).lease_id)
    await sched.tick()
    assert sched.state("alpha") is ModelState.READY
    runtime.kill("alpha", exit_code=137)
    await sched.tick()
    assert sched.state("alpha") is ModelState.FAILED
    assert "exited with code 137" in sched.model_status("alpha").last_error
    lease = await sched.acquire("alpha")
    assert lease.model == "alpha"
    assert runtime.calls == [("start", "alpha"), ("stop", "alpha"), ("start", "alpha")]


async def test_death_of_the_resident_does_not_fail_other_waiters(sched, runtime):
    held = await sched.acquire("alpha")
    beta = asyncio.create_task(sched.acquire("beta"))
    await until(lambda: sched.waiting_count() == 1, "beta to queue")
    runtime.kill("alpha")
    await sched.tick()
    assert sched.state("alpha") is ModelState.FAILED
    assert not beta.done()
    assert ("stop", "alpha") not in runtime.calls  # its lease is still out
    sched.release(held.lease_id)
    assert (await beta).model == "beta"


async def test_stop_waits_for_in_flight_leases(sched, runtime):
    lease = await sched.acquire("alpha")
    stopping = asyncio.create_task(sched.stop("alpha"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not stopping.done()
    assert sched.state("alpha") is ModelState.READY
    sched.release(lease.lease_id)
    assert await stopping is ModelState.STOPPED
    assert runtime.calls[-1] == ("stop", "alpha")


async def test_stop_of_a_model_that_is_not_resident_returns_at_once(sched, runtime):
    assert await sched.stop("beta") is ModelState.STOPPED
    assert runtime.calls == []


async def test_requests_after_an_explicit_stop_start_the_model_again(sched, runtime):
    lease = await sched.acquire("alpha")
    stopping = asyncio.create_task(sched.stop("alpha"))
    await asyncio.sleep(0)
    again = asyncio.create_task(sched.acquire("alpha"))
    await until(lambda: sched.model_status("alpha").waiting == 1, "queued behind the stop")
    sched.release(lease.lease_id)
    await stopping
    assert (await again).model == "alpha"
    assert runtime.calls == [("start", "alpha"), ("stop", "alpha"), ("start", "alpha")]


async def test_ensure_makes_resident_and_holds_nothing(sched):
    state, base_url = await sched.ensure("pix")
    assert state is ModelState.READY
    assert base_url == "http://127.0.0.1:18003"
    assert sched.model_status("pix").in_flight == 0


async def test_stop_retries_runtime_failures(sched, runtime):
    sched.release((await sched.acquire("alpha")).lease_id)
    runtime.stop_failures["alpha"] = 2
    assert await sched.stop("alpha") is ModelState.STOPPED
    assert runtime.calls.count(("stop", "alpha")) == 3


async def test_a_stop_that_keeps_failing_leaves_the_model_failed_and_resident(sched, runtime):
    sched.release((await sched.acquire("alpha")).lease_id)
    runtime.stop_failures["alpha"] = 3
    with pytest.raises(RuntimeFailure, match="engine refused"):
        await sched.stop("alpha")
    assert sched.state("alpha") is ModelState.FAILED
    assert sched.residents == ["alpha"]
    assert "stop failed" in sched.model_status("alpha").last_error
    assert (await sched.acquire("beta")).model == "beta"  # the next demand retries the stop
    assert runtime.max_running == 1


async def test_gpu_release_is_checked_between_a_stop_and_the_next_start(sched, gpu):
    sched.release((await sched.acquire("alpha")).lease_id)
    assert gpu.calls == []  # a cold start does not wait
    await sched.acquire("beta")
    assert gpu.calls == [sched.config.gpu_release_timeout]


async def test_gpu_memory_not_released_fails_the_start(sched, gpu, runtime):
    sched.release((await sched.acquire("alpha")).lease_id)
    gpu.error = GpuMemoryNotReleased("GPU0 7000 MiB still in use")
    with pytest.raises(StartFailed, match="GPU memory was not released"):
        await sched.acquire("beta")
    assert ("start", "beta") not in runtime.calls
    gpu.error = None
    assert (await sched.acquire("beta")).model == "beta"


async def test_state_and_swap_events_in_order(sched):
    sub = sched.events.subscribe()
    sched.release((await sched.acquire("alpha")).lease_id)
    await sched.acquire("beta")
    events = []
    while sub.pending():
        events.append(await sub.next())
    summary = [
        (e.model, e.previous, e.state)
        if isinstance(e, StateEvent)
        else ("swap", e.from_model, e.to)
        for e in events
    ]
    assert summary == [
        ("alpha", "stopped", "starting"),
        ("swap", None, "alpha"),
        ("alpha", "starting", "ready"),
        ("alpha", "ready", "stopping"),
        ("alpha", "stopping", "stopped"),
        ("beta", "stopped", "starting"),
        ("swap", "alpha", "beta"),
        ("beta", "starting", "ready"),
    ]


async def test_status_lists_every_model_with_image_fields(sched):
    statuses = {s.id: s.to_wire() for s in sched.status()}
    assert list(statuses) == ["alpha", "beta", "pix"]
    assert statuses["alpha"]["object"] == "model"
    assert statuses["alpha"]["description"] == "the first"
    assert "sizes" not in statuses["alpha"]
    assert statuses["pix"]["sizes"] == ["512x512", "768x768"]
    assert statuses["pix"]["max_n"] == 2
    assert all(s["state"] == "stopped" for s in statuses.values())


async def test_close_fails_waiters_and_refuses_new_requests(sched, probe):
    probe.hold("alpha")
    waiter = asyncio.create_task(sched.acquire("alpha"))
    await until(lambda: sched.waiting_count() == 1, "the waiter")
    await sched.close()
    with pytest.raises(RuntimeFailure, match="shutting down"):
        await waiter
    with pytest.raises(RuntimeFailure, match="shutting down"):
        await sched.acquire("alpha")


async def test_logs_come_from_the_runtime(sched):
    sched.release((await sched.acquire("alpha")).lease_id)
    assert await sched.logs("alpha", 10) == "alpha starting"


# ------------------------------------------------------------------ adoption


def _sched(runtime: FakeRuntime, probe: FakeProbe) -> Scheduler:
    return Scheduler(catalogue(), runtime, probe, SchedulerConfig(stop_backoff=0))


def _hash(name: str) -> str:
    from manager.runtime import spec_hash

    return spec_hash(catalogue().models[name])


async def test_adopts_a_running_server_as_starting_and_health_checks_it(runtime, probe):
    runtime.put("alpha", hash_=_hash("alpha"))
    sched = _sched(runtime, probe)
    try:
        probe.hold("alpha")
        await sched.adopt()
        assert sched.state("alpha") is ModelState.STARTING
        probe.release("alpha")
        lease = await sched.acquire("alpha")
        assert lease.model == "alpha"
        assert runtime.calls == []  # no new start: the adopted server serves
        assert probe.ready_calls == ["alpha"]
        assert sched.swaps == 0
    finally:
        await sched.close()


async def test_adoption_keeps_one_and_stops_the_rest(runtime, probe):
    runtime.put("beta", hash_=_hash("beta"))
    runtime.put("alpha", hash_=_hash("alpha"))
    runtime.put("ghost")  # an owned container of a model no longer in models.json
    sched = _sched(runtime, probe)
    try:
        await sched.adopt()
        await until(lambda: sched.state("alpha") is ModelState.READY, "alpha adopted")
        assert sorted(runtime.calls) == [("stop", "beta"), ("stop", "ghost")]
        assert sched.state("beta") is ModelState.STOPPED
        assert runtime.running() == ["alpha"]
        ghost_spec = runtime.stop_specs[[c[1] for c in runtime.calls].index("ghost")]
        assert ghost_spec is None
    finally:
        await sched.close()


async def test_adoption_removes_exited_and_outdated_servers(runtime, probe):
    runtime.put("alpha", running=False, exit_code=0, hash_=_hash("alpha"))
    runtime.put("beta", hash_="0123456789abcdef")  # started from an older models.json
    sched = _sched(runtime, probe)
    try:
        await sched.adopt()
        assert sorted(runtime.calls) == [("stop", "alpha"), ("stop", "beta")]
        assert sched.residents == []
        assert runtime.instances == {}
    finally:
        await sched.close()


async def test_an_adopted_server_that_is_not_healthy_fails(runtime, probe):
    runtime.put("alpha", hash_=_hash("alpha"))
    probe.fail_next("alpha", "/health answered 503", exit_code=None)
    sched = _sched(runtime, probe)
    try:
        await sched.adopt()
        await until(lambda: sched.state("alpha") is ModelState.FAILED, "adoption failure")
        assert "/health answered 503" in sched.model_status("alpha").last_error
        assert (await sched.acquire("beta")).model == "beta"
        assert runtime.calls == [("stop", "alpha"), ("start", "beta")]
    finally:
        await sched.close()


async def test_a_removal_failure_during_adoption_is_not_fatal(runtime, probe):
    runtime.put("ghost")
    runtime.stop_failures["ghost"] = 10
    sched = _sched(runtime, probe)
    try:
        await sched.adopt()
        assert runtime.calls == [("stop", "ghost")] * sched.config.stop_attempts
        assert sched.residents == []
        assert sched.status()  # the scheduler is usable
    finally:
        await sched.close()


async def test_a_lease_granted_as_the_request_is_cancelled_is_released(sched, probe):
    probe.hold("alpha")
    task = asyncio.create_task(sched.acquire("alpha"))
    await until(lambda: sched.waiting_count() == 1, "the waiter")
    future = sched._records["alpha"].waiters[0].future
    # Cancel the request in the same loop step as the grant, before it can resume.
    future.add_done_callback(lambda _: task.cancel())
    probe.release("alpha")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert future.done() and not future.cancelled()
    assert sched.model_status("alpha").in_flight == 0


async def test_adoption_is_retried_until_the_runtime_answers(runtime, probe, monkeypatch):
    runtime.put("alpha", hash_=_hash("alpha"))
    real_list = runtime.list_owned

    async def engine_down():
        raise RuntimeFailure("Docker engine is not reachable")

    monkeypatch.setattr(runtime, "list_owned", engine_down)
    sched = _sched(runtime, probe)
    try:
        await sched.start()  # does not raise
        assert not sched.adopted
        await sched.tick()
        assert not sched.adopted
        monkeypatch.setattr(runtime, "list_owned", real_list)
        await sched.tick()
        assert sched.adopted
        await until(lambda: sched.state("alpha") is ModelState.READY, "alpha adopted")
        assert runtime.calls == []
    finally:
        await sched.close()
