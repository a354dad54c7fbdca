"""The readiness probe protocol the scheduler uses; `manager.health` implements it.

The scheduler never speaks HTTP to a model server itself: it asks a probe.
`manager.health.HttpReadinessProbe` is the real one (vLLM and image server
checks); unit tests hand in a fake with the same methods.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from manager.runtime import ContainerRuntime, Spec


@runtime_checkable
class ReadinessProbe(Protocol):
    async def wait_ready(self, name: str, spec: Spec, runtime: ContainerRuntime) -> None:
        """Return when the server is ready.

        Raises `StartFailed` (with exit_code and last log lines) if the server exits,
        reports failure, or misses `spec.start_timeout`. Cancellable.
        """

    async def check_alive(self, name: str, spec: Spec, runtime: ContainerRuntime) -> str | None:
        """None if the ready server is still healthy, else the reason it is not
        (container exited, /health 503, ...). Does not raise for an unhealthy server."""


class GpuReleaseCheck(Protocol):
    async def __call__(
        self,
        timeout: float,  # noqa: ASYNC109 (the agreed interface)
        *,
        need_mib: int | None = None,
    ) -> None:
        """Return once GPU memory is released (`need_mib` None: the GPU is all but empty;
        else: that much is free); raise `GpuMemoryNotReleased` after `timeout`."""
