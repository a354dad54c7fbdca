"""manager.gpu: the NVML-less path and the release logic with an injected memory reader."""

from __future__ import annotations

import logging
import sys
import types

import pytest

from manager import gpu
from manager.errors import GpuMemoryNotReleased


class Readings:
    """A memory reader that returns the given readings in turn (the last one repeats)."""

    def __init__(self, *readings: list[int]) -> None:
        self.readings = list(readings)
        self.calls = 0

    def __call__(self) -> list[int]:
        self.calls += 1
        return self.readings[min(self.calls, len(self.readings)) - 1]


@pytest.fixture(autouse=True)
def fresh_reader_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_reader_cache", gpu._UNSET)


async def test_without_pynvml_the_check_is_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with caplog.at_level(logging.INFO, logger="manager.gpu"):
        await gpu.wait_gpu_memory_released(timeout=30)
    assert "skipped" in caplog.text and "not installed" in caplog.text


async def test_an_nvml_without_a_driver_is_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class NVMLError(Exception):
        pass

    def no_driver() -> None:
        raise NVMLError("Driver Not Loaded")

    fake = types.SimpleNamespace(nvmlInit=no_driver)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with caplog.at_level(logging.INFO, logger="manager.gpu"):
        assert gpu.nvml_reader() is None
        await gpu.wait_gpu_memory_released(timeout=30)
    assert "Driver Not Loaded" in caplog.text


def test_the_nvml_reader_reports_used_mib_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    used = {0: 1500 * 1024 * 1024, 1: 20 * 1024 * 1024 * 1024}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=used[h]),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    reader = gpu.nvml_reader()
    assert reader is not None
    assert reader() == [1500, 20480]


async def test_returns_once_memory_drops_below_the_threshold() -> None:
    reader = Readings([9000], [4000], [900])
    await gpu.wait_gpu_memory_released(30, 1024, reader=reader, interval=0.01)
    assert reader.calls == 3


async def test_every_gpu_must_be_below_the_threshold() -> None:
    reader = Readings([100, 8000], [100, 8000], [100, 200])
    await gpu.wait_gpu_memory_released(30, 1024, reader=reader, interval=0.01)
    assert reader.calls == 3


async def test_memory_still_in_use_after_the_timeout_raises() -> None:
    reader = Readings([100, 7000])
    with pytest.raises(GpuMemoryNotReleased) as raised:
        await gpu.wait_gpu_memory_released(0.1, 1024, reader=reader, interval=0.02)
    assert "GPU1 7000 MiB" in str(raised.value) and "threshold 1024 MiB" in str(raised.value)
    assert reader.calls >= 2


async def test_a_zero_timeout_checks_once() -> None:
    busy = Readings([5000])
    with pytest.raises(GpuMemoryNotReleased):
        await gpu.wait_gpu_memory_released(0, 1024, reader=busy)
    assert busy.calls == 1
    free = Readings([10])
    await gpu.wait_gpu_memory_released(0, 1024, reader=free)
    assert free.calls == 1


async def test_a_failing_reader_gives_up_instead_of_blocking_swaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> list[int]:
        raise RuntimeError("GPU is lost")

    with caplog.at_level(logging.WARNING, logger="manager.gpu"):
        await gpu.wait_gpu_memory_released(30, reader=broken)
    assert "GPU is lost" in caplog.text


def fake_nvml(monkeypatch: pytest.MonkeyPatch, used_mib: int, total_mib: int) -> None:
    mib = 1024 * 1024
    info = types.SimpleNamespace(used=used_mib * mib, total=total_mib * mib)
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: info,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)


async def test_the_card_total_and_used_memory_come_from_nvml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_nvml(monkeypatch, used_mib=3000, total_mib=24564)
    assert gpu.card_total_mib() == 24564
    assert await gpu.used_mib() == 3000


async def test_without_nvml_there_is_no_total_and_no_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert gpu.card_total_mib() is None
    assert await gpu.used_mib() is None


async def test_a_declared_start_waits_until_its_memory_is_free() -> None:
    """24000 MiB card, a resident holds 10000: a 9000 MiB model may start beside it once
    the stopped one's memory is back."""
    reader = Readings([20000], [17000], [10000])
    await gpu.wait_gpu_memory_released(
        30, reader=reader, interval=0.01, need_mib=9000, total_mib=24000
    )
    assert reader.calls == 3


async def test_a_declared_start_without_room_fails_naming_what_is_free() -> None:
    with pytest.raises(GpuMemoryNotReleased, match="4000 MiB free .* less than the 9000 MiB"):
        await gpu.wait_gpu_memory_released(
            0.05, reader=Readings([20000]), interval=0.01, need_mib=9000, total_mib=24000
        )
