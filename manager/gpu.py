"""The GPU's memory from NVML (optional): room before a start, the card's size, use.

vLLM and diffusers free GPU memory as their process exits, but the driver may
take a moment (longer on WSL2). Starting the next model before that can fail
with an out-of-memory error, so the scheduler calls `wait_gpu_memory_released`
before a start: a model that runs alone waits until the GPU is all but empty, a
model with a declared footprint until the first GPU's free memory covers it.
`card_total_mib` (the default GPU budget, `manager.budget`) and `used_mib`
(learned footprints, `manager.footprints`) read the first GPU.

NVML comes from `nvidia-ml-py` (the `gpu` extra, imported as `pynvml`). Where it
is not installed or no NVIDIA driver answers, the check is skipped: it returns
at once and logs that once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from manager.errors import GpuMemoryNotReleased

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD_MIB = 2048
"""Used memory (per GPU) at or below which the GPU counts as free: room for a desktop
session and the CUDA context of other programs, far below any model."""

MemoryReader = Callable[[], list[int]]
"""Returns the used memory of each GPU in MiB. Blocking; called in a thread."""

_UNSET = object()
_reader_cache: object = _UNSET


def _nvml_handles() -> list[object] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # pynvml.NVMLError and driver load failures
        return None


def card_total_mib() -> int | None:
    """The first GPU's total memory in MiB, or None without NVML or a GPU. Blocking."""
    handles = _nvml_handles()
    if not handles:
        return None
    import pynvml

    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(handles[0]).total // (1024 * 1024))
    except Exception as exc:  # NVML errors
        log.warning("could not read the GPU's total memory: %s", exc)
        return None


async def used_mib() -> int | None:
    """The first GPU's used memory in MiB, or None without NVML (or on an NVML error)."""
    reader = await _default_reader()
    if reader is None:
        return None
    try:
        return (await asyncio.to_thread(reader))[0]
    except Exception as exc:  # NVML errors mid-run
        log.warning("reading GPU memory failed: %s", exc)
        return None


def nvml_reader() -> MemoryReader | None:
    """A reader backed by NVML, or None if NVML is not installed or has no driver/GPU."""
    try:
        import pynvml
    except ImportError:
        log.info("GPU memory check skipped: nvidia-ml-py (pynvml) is not installed")
        return None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    except Exception as exc:  # pynvml.NVMLError and driver load failures
        log.info("GPU memory check skipped: NVML is unavailable (%s)", exc)
        return None
    if not handles:
        log.info("GPU memory check skipped: NVML sees no GPU")
        return None

    def read() -> list[int]:
        return [pynvml.nvmlDeviceGetMemoryInfo(h).used // (1024 * 1024) for h in handles]

    return read


async def _default_reader() -> MemoryReader | None:
    global _reader_cache
    if _reader_cache is _UNSET:
        _reader_cache = await asyncio.to_thread(nvml_reader)
    return _reader_cache  # type: ignore[return-value]


async def wait_gpu_memory_released(
    timeout: float,  # noqa: ASYNC109 (the agreed GpuReleaseCheck interface)
    threshold_mib: int = DEFAULT_THRESHOLD_MIB,
    *,
    reader: MemoryReader | None = None,
    interval: float = 0.5,
    need_mib: int | None = None,
    total_mib: int | None = None,
) -> None:
    """Return once every GPU uses at most `threshold_mib` MiB, or, with `need_mib`, once
    the first GPU has `need_mib` MiB free of its `total_mib` (default: NVML's); poll
    every `interval` s.

    With no `reader`, NVML is used; without NVML this returns at once. Raises
    GpuMemoryNotReleased if memory is still in use after `timeout` seconds (a
    `timeout` of 0 checks once). Cancellable. A reader that fails is logged and the
    check is given up (returns), since a broken NVML must not block every swap.
    """
    if reader is None:
        reader = await _default_reader()
        if reader is None:
            return
    if need_mib is not None and total_mib is None:
        total_mib = await asyncio.to_thread(card_total_mib)
        if total_mib is None:
            return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, timeout)
    while True:
        try:
            used = await asyncio.to_thread(reader)
        except Exception as exc:  # NVML errors mid-run (driver reset, GPU lost)
            log.warning("GPU memory check gave up: reading GPU memory failed: %s", exc)
            return
        if need_mib is not None and total_mib is not None:
            if total_mib - used[0] >= need_mib:
                return
        elif all(mib <= threshold_mib for mib in used):
            return
        remaining = deadline - loop.time()
        if remaining <= 0 and need_mib is not None:
            raise GpuMemoryNotReleased(
                f"the GPU has {total_mib - used[0] if total_mib else 0} MiB free {timeout:g}s "
                f"after the start was decided, less than the {need_mib} MiB the model declares; "
                "another program may hold GPU memory, or a resident takes more than it declares"
            )
        if remaining <= 0:
            raise GpuMemoryNotReleased(
                f"GPU memory still in use {timeout:g}s after the previous model stopped: "
                f"{', '.join(f'GPU{i} {mib} MiB' for i, mib in enumerate(used))} "
                f"(threshold {threshold_mib} MiB); another program may hold the GPU"
            )
        await asyncio.sleep(min(interval, remaining))
