"""The manager's one exception tree. Only `manager.api` maps these to HTTP statuses.

Lower layers wrap foreign exceptions (`docker.errors.*`, `httpx.*`, `OSError`)
with ``raise X from exc`` so callers handle one family.
"""

from __future__ import annotations


class ManagerError(Exception):
    """Base of every error the manager raises on purpose."""

    code = "manager_error"


class CatalogueError(ManagerError):
    """models.json is unreadable or invalid. The message names file, key and reason."""

    code = "invalid_catalogue"

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source, self.key, self.reason = source, key, reason
        where = f"{source}: key '{key}'" if key else source
        super().__init__(f"{where}: {reason}")


class UnknownModelError(ManagerError):
    """The name is not in the catalogue."""

    code = "model_not_found"

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"model {name!r} is not in models.json; known models: {', '.join(known)}")


class RuntimeFailure(ManagerError):
    """The container runtime (Docker engine or process launcher) failed an operation."""

    code = "runtime_error"


class StartFailed(ManagerError):
    """A model server did not become ready: it exited, reported failure, or timed out.

    `exit_code` is set when the server process/container exited; `logs` carries
    its last log lines.
    """

    code = "model_start_failed"

    def __init__(self, model: str, reason: str, *, exit_code: int | None = None, logs: str = "") -> None:
        self.model, self.reason, self.exit_code, self.logs = model, reason, exit_code, logs
        super().__init__(f"model {model!r} failed to start: {reason}")


class GpuMemoryNotReleased(ManagerError):
    """GPU memory stayed in use after the previous model stopped."""

    code = "gpu_memory_busy"


class BusyError(ManagerError):
    """The wait queue is full, or the caller waited past the queue timeout."""

    code = "busy"

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class LeaseNotFound(ManagerError):
    """The lease id is unknown (already released or expired)."""

    code = "lease_not_found"
