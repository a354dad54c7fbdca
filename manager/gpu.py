"""Wait for GPU memory to be released after a model server stops (NVML, optional).

vLLM and diffusers free GPU memory as their process exits, but the driver may
take a moment (longer on WSL2). Starting the next model before that can fail
with an out-of-memory error, so the scheduler calls
`wait_gpu_memory_released` between a stop and the next start.

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
) -> None:
    """Return once every GPU uses at most `threshold_mib` MiB; poll every `interval` s.

    With no `reader`, NVML is used; without NVML this returns at once. Raises
    GpuMemoryNotReleased if memory is still in use after `timeout` seconds (a
    `timeout` of 0 checks once). Cancellable. A reader that fails is logged and the
    check is given up (returns), since a broken NVML must not block every swap.
    """
    if reader is None:
        reader = await _default_reader()
        if reader is None:
            return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, timeout)
    while True:
        try:
            used = await asyncio.to_thread(reader)
        except Exception as exc:  # NVML errors mid-run (driver reset, GPU lost)
            log.warning("GPU memory check gave up: reading GPU memory failed: %s", exc)
            return
        if all(mib <= threshold_mib for mib in used):
            return
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise GpuMemoryNotReleased(
                f"GPU memory still in use {timeout:g}s after the previous model stopped: "
                f"{', '.join(f'GPU{i} {mib} MiB' for i, mib in enumerate(used))} "
                f"(threshold {threshold_mib} MiB); another program may hold the GPU"
            )
        await asyncio.sleep(min(interval, remaining))
