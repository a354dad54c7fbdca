"""The GPU memory budget: where it comes from, the catalogue checks, vLLM's share, and the
scheduler keeping several models resident within it (fakes behind the real protocols)."""

from __future__ import annotations

import asyncio
import json

import pytest
from manager_fakes import CATALOGUE, FakeProbe, FakeRuntime, GpuCheck, until

from manager import budget
from manager.__main__ import main
from manager.errors import CatalogueError
from manager.footprints import FootprintStore, report
from manager.scheduler import Scheduler, SchedulerConfig
from manager.spec import parse_catalogue
from manager.state import ModelState
from wire.events import ContentionEvent, SwapEvent

CONFIG = SchedulerConfig(
    queue_limit=16, queue_timeout=30, batch_bound=2, lease_ttl=120, standby=False
)
"""Standby off: a stopped model is not prepared again, so the runtime calls below are
those of the placement alone."""


def models(**overrides: dict) -> dict:
    """The fakes' catalogue with per-model overrides (e.g. alpha={"gpu_memory_mib": 10})."""
    data = {name: dict(entry) for name, entry in CATALOGUE.items()}
    for name, extra in overrides.items():
        data[name].update(extra)
    return data


def budget_of(mib: int | None, card: int | None = None) -> budget.GpuBudget:
    return budget.resolve(setting_mib=mib, catalogue_mib=None, card_mib=card, reserve_mib=0)


# ---------------------------------------------------------------- where the budget comes from


def test_the_setting_wins_then_the_file_then_the_card() -> None:
    both = budget.resolve(setting_mib=10, catalogue_mib=20, card_mib=24000, reserve_mib=1000)
    assert (both.mib, both.total_mib, both.source) == (10, 24000, "HOMELAB_GPU_BUDGET_MIB")
    file = budget.resolve(setting_mib=None, catalogue_mib=20, card_mib=None, reserve_mib=1000)
    assert (file.mib, file.total_mib) == (20, 1020)
    card = budget.resolve(setting_mib=None, catalogue_mib=None, card_mib=24000, reserve_mib=1000)
    assert (card.mib, card.total_mib) == (23000, 24000)
    none = budget.resolve(setting_mib=None, catalogue_mib=None, card_mib=None, reserve_mib=1000)
    assert none.mib is None and "one model at a time" in none.source


def test_the_file_budget_is_read_and_unknown_settings_are_refused() -> None:
    data = {"$gpu_budget_mib": 12000, **models()}
    assert parse_catalogue(data, "m.json").gpu_budget_mib == 12000
    with pytest.raises(CatalogueError, match=r"m.json: key '\$gpu_budget': unknown setting"):
        parse_catalogue({"$gpu_budget": 1, **models()}, "m.json")
    with pytest.raises(CatalogueError, match=r"key '\$gpu_budget_mib': must be a whole number"):
        parse_catalogue({"$gpu_budget_mib": "lots", **models()}, "m.json")


# ---------------------------------------------------------------- catalogue checks


@pytest.mark.parametrize(
    ("overrides", "mib", "key", "reason"),
    [
        ({"alpha": {"gpu_memory_mib": 30}}, 20, "alpha.gpu_memory_mib", "more than the GPU budget"),
        ({"alpha": {"pinned": True}}, None, "alpha.pinned", "needs a GPU budget"),
        ({"alpha": {"pinned": True}}, 20, "alpha.pinned", "needs gpu_memory_mib"),
        (
            {"beta": {"pinned": True, "gpu_memory_mib": 5}},
            20,
            "beta.idle_ttl",
            "never stopped for idleness",
        ),
        (
            {"alpha": {"pinned": True, "gpu_memory_mib": 15}, "pix": {"gpu_memory_mib": 8}},
            20,
            "beta.gpu_memory_mib",  # beta declares nothing: it needs all 20
            "does not fit beside the pinned",
        ),
        (
            {"alpha": {"gpu_memory_mib": 10, "args": ["--gpu-memory-utilization", "0.9"]}},
            20,
            "alpha.args",
            "declares 10 MiB",
        ),
        (
            {"alpha": {"args": ["--gpu-memory-utilization=lots"]}},
            20,
            "alpha.args",
            "needs a number",
        ),
    ],
)
def test_a_catalogue_that_cannot_run_as_declared_is_refused(
    overrides: dict, mib: int | None, key: str, reason: str
) -> None:
    catalogue = parse_catalogue(models(**overrides), "m.json")
    with pytest.raises(CatalogueError, match=reason) as caught:
        budget.apply(catalogue, budget_of(mib, card=None if mib is None else 20))
    assert (caught.value.file, caught.value.key) == ("m.json", key)


def test_vllm_gets_its_share_of_the_card_unless_its_args_set_one() -> None:
    data = models(
        alpha={"gpu_memory_mib": 9500},
        beta={"gpu_memory_mib": 6000, "args": ["--gpu-memory-utilization=0.25"]},
        pix={"gpu_memory_mib": 8000},
    )
    data["cpu"] = {**data["alpha"], "container": "t-cpu", "port": 18009, "gpu": False}
    applied = budget.apply(parse_catalogue(data), budget_of(23000, card=24000))
    assert applied.models["alpha"].args[-2:] == ["--gpu-memory-utilization", "0.395"]
    assert applied.models["beta"].args == ["--gpu-memory-utilization=0.25"]  # 6000 of 24000
    assert "--gpu-memory-utilization" not in applied.models["cpu"].args  # not on the GPU
    assert not hasattr(applied.models["pix"], "args")  # image models are not vLLM


def test_an_embedding_model_gets_its_share_of_the_card_like_a_text_model() -> None:
    data = models(alpha={"gpu_memory_mib": 9500})
    data["emb"] = {
        **data["alpha"],
        "type": "embedding",
        "container": "t-emb",
        "port": 18010,
        "gpu_memory_mib": 1200,
    }
    applied = budget.apply(parse_catalogue(data), budget_of(23000, card=24000))
    assert applied.models["emb"].args[-2:] == ["--gpu-memory-utilization", "0.050"]
    data["emb"]["args"] = ["--gpu-memory-utilization", "0.5"]  # 12000 MiB, not 1200
    with pytest.raises(CatalogueError, match="gpu_memory_mib declares 1200"):
        budget.apply(parse_catalogue(data), budget_of(23000, card=24000))


def test_manager_check_reports_the_budget(tmp_path, capsys) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"$gpu_budget_mib": 20, **models(alpha={"gpu_memory_mib": 30})}))
    assert main(["check", str(path)]) == 1
    assert "alpha.gpu_memory_mib" in capsys.readouterr().err
    path.write_text(json.dumps({"$gpu_budget_mib": 20, **models(alpha={"gpu_memory_mib": 10})}))
    assert main(["check", str(path)]) == 0
    assert "GPU budget 20 MiB" in capsys.readouterr().out


# ---------------------------------------------------------------- the scheduler within a budget


def scheduler(
    data: dict,
    mib: int | None,
    runtime: FakeRuntime,
    **kw: object,
) -> Scheduler:
    b = budget_of(mib, card=None if mib is None else mib)
    return Scheduler(
        budget.apply(parse_catalogue(data), b), runtime, FakeProbe(), CONFIG, budget=b, **kw
    )  # type: ignore[arg-type]


FIT = models(
    alpha={"gpu_memory_mib": 10, "gpu": False},
    beta={"gpu_memory_mib": 6, "gpu": False, "idle_ttl": None},
    pix={"gpu_memory_mib": 8},
)


async def test_two_models_that_fit_stay_resident_across_alternating_requests() -> None:
    runtime = FakeRuntime(capacity=20)
    sched = scheduler(FIT, 20, runtime)
    try:
        for model in ["alpha", "pix"] * 4:
            sched.release((await sched.acquire(model)).lease_id)
        assert runtime.calls == [("start", "alpha"), ("start", "pix")]
        assert sched.residents == ["alpha", "pix"] and sched.evictions == 0
        assert [s.state for s in sched.status()] == ["ready", "stopped", "ready"]
    finally:
        await sched.close()


async def test_a_third_that_does_not_fit_evicts_the_least_recently_used_idle_one() -> None:
    runtime = FakeRuntime(capacity=20)
    sched = scheduler(FIT, 20, runtime)
    events = sched.events.subscribe()
    try:
        for model in ["alpha", "pix", "alpha"]:  # pix is now the least recently used
            sched.release((await sched.acquire(model)).lease_id)
        sched.release((await sched.acquire("beta")).lease_id)  # 10 + 8 + 6 > 20
        assert runtime.calls[2:] == [("stop", "pix"), ("start", "beta")]
        assert sched.residents == ["alpha", "beta"] and sched.evictions == 1
        swaps = [e for e in events.drain() if isinstance(e, SwapEvent)]
        assert [(s.from_model, s.to) for s in swaps] == [
            (None, "alpha"),
            (None, "pix"),
            ("pix", "beta"),
        ]
    finally:
        await sched.close()


async def test_a_resident_with_a_lease_in_flight_is_never_evicted() -> None:
    runtime = FakeRuntime(capacity=20)
    sched = scheduler(FIT, 20, runtime)
    events = sched.events.subscribe()
    try:
        held_alpha = await sched.acquire("alpha")
        sched.release((await sched.acquire("pix")).lease_id)
        assert not sched.contended("alpha")
        beta = asyncio.create_task(sched.acquire("beta"))  # needs 6: pix (idle) goes
        assert (await beta).model == "beta"
        assert ("stop", "alpha") not in runtime.calls
        assert runtime.calls[-2:] == [("stop", "pix"), ("start", "beta")]
        # Now pix needs alpha's or beta's room: beta holds a lease too, so pix waits.
        pix = asyncio.create_task(sched.acquire("pix"))
        await until(lambda: sched.model_status("pix").waiting == 1, "pix to queue")
        assert sched.contended("alpha") and sched.contended("beta")
        told = [e for e in events.drain() if isinstance(e, ContentionEvent)]
        assert told and set(told[-1].models) == {"alpha", "beta"}
        sched.release(held_alpha.lease_id)  # alpha (least recently used, idle) goes
        assert (await pix).model == "pix"
        assert runtime.calls[-2:] == [("stop", "alpha"), ("start", "pix")]
        assert not sched.contended("beta")
    finally:
        await sched.close()


async def test_a_pinned_model_starts_at_boot_and_is_never_evicted() -> None:
    data = models(
        alpha={"gpu_memory_mib": 10, "pinned": True},
        beta={"gpu_memory_mib": 6, "idle_ttl": None},
        pix={"gpu_memory_mib": 8},
    )
    runtime = FakeRuntime(capacity=20)
    sched = scheduler(data, 20, runtime)
    try:
        await sched.start()
        await until(lambda: sched.state("alpha") is ModelState.READY, "the pinned start")
        assert runtime.calls == [("start", "alpha")]
        for model in ["beta", "pix", "beta", "pix"]:
            sched.release((await sched.acquire(model)).lease_id)
        assert ("stop", "alpha") not in runtime.calls
        assert sched.model_status("alpha").pinned
    finally:
        await sched.close()


async def test_without_a_budget_models_still_run_one_at_a_time() -> None:
    runtime = FakeRuntime()  # raises TwoResident on a second running server
    sched = scheduler(FIT, None, runtime)
    try:
        for model in ["alpha", "pix", "alpha"]:
            sched.release((await sched.acquire(model)).lease_id)
        assert runtime.max_running == 1 and sched.evictions == 2
    finally:
        await sched.close()


async def test_priority_decides_which_waiting_model_starts_first() -> None:
    data = models(alpha={"priority": 0}, beta={"priority": 5, "idle_ttl": None})
    runtime = FakeRuntime()
    sched = scheduler(data, None, runtime)
    try:
        held = await sched.acquire("pix")
        alpha = asyncio.create_task(sched.acquire("alpha"))  # older, lower priority
        await until(lambda: sched.model_status("alpha").waiting == 1, "alpha to queue")
        beta = asyncio.create_task(sched.acquire("beta"))
        await until(lambda: sched.model_status("beta").waiting == 1, "beta to queue")
        sched.release(held.lease_id)
        sched.release((await beta).lease_id)
        sched.release((await alpha).lease_id)
        starts = [name for kind, name in runtime.calls if kind == "start"]
        assert starts == ["pix", "beta", "alpha"]
    finally:
        await sched.close()


async def test_room_is_confirmed_from_the_gpu_and_footprints_are_learned(tmp_path, caplog) -> None:
    used = iter([1000, 11500, 11500, 19000])  # before alpha, alpha ready, before pix, pix ready
    readings: list[int] = []

    async def gpu_used() -> int:
        readings.append(next(used))
        return readings[-1]

    gpu = GpuCheck()
    store = FootprintStore(tmp_path / "footprints.json")
    data = models(alpha={"gpu_memory_mib": 10000}, pix={"gpu_memory_mib": 8000})
    sched = scheduler(
        data, 20000, FakeRuntime(20000), gpu_released=gpu, gpu_used=gpu_used, footprints=store
    )
    try:
        sched.release((await sched.acquire("alpha")).lease_id)
        sched.release((await sched.acquire("pix")).lease_id)
    finally:
        await sched.close()
    assert gpu.needs == [10000, 8000]
    assert sched.model_status("alpha").observed_gpu_memory_mib == 10500
    assert sched.model_status("pix").observed_gpu_memory_mib == 7500
    assert "alpha takes 10500 MiB" in caplog.text  # over its declaration: a warning
    reopened = FootprintStore(tmp_path / "footprints.json")
    assert reopened.observed() == {"alpha": 10500, "pix": 7500}
    lines, over = report(parse_catalogue(data), reopened)
    assert over and any("alpha" in line and "OVER by 500" in line for line in lines)


class PreparingFake(FakeRuntime):
    """A runtime that can prepare a start ahead (`manager.runtime.PreparingRuntime`)."""

    async def prepare(self, name: str, spec: object) -> None:
        self.calls.append(("prepare", name))


async def test_the_incoming_model_is_prepared_while_the_resident_drains() -> None:
    runtime = PreparingFake()
    sched = scheduler(FIT, None, runtime)
    try:
        held = await sched.acquire("alpha")
        pix = asyncio.create_task(sched.acquire("pix"))
        await until(lambda: ("prepare", "pix") in runtime.calls, "pix to be prepared")
        assert ("stop", "alpha") not in runtime.calls  # alpha still has its lease
        sched.release(held.lease_id)
        assert (await pix).model == "pix"
        assert runtime.calls == [
            ("start", "alpha"),
            ("prepare", "pix"),
            ("stop", "alpha"),
            ("start", "pix"),
        ]
    finally:
        await sched.close()
