"""The manager's one exception tree. Each class carries its HTTP answer (`wire.errors.ApiError`:
status, OpenAI type, code, param); `manager.api` installs the one set of handlers.

Lower layers wrap foreign exceptions (`docker.errors.*`, `httpx.*`, `OSError`)
with ``raise X from exc`` so callers handle one family.
"""

from __future__ import annotations

import math

from wire.errors import ApiError

LOG_LINES_IN_ERRORS = 20


class ManagerError(ApiError):
    """Base of every error the manager raises on purpose (500 unless a subclass says)."""

    status, type, code = 500, "server_error", "manager_error"


class Unauthorized(ManagerError):
    """Missing or wrong bearer token (401)."""

    status, type, code = 401, "authentication_error", "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class CatalogueError(ManagerError):
    """models.json is unreadable or invalid. The message names file, key and reason."""

    code = "invalid_catalogue"

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.file, self.key, self.reason = source, key, reason
        where = f"{source}: key '{key}'" if key else source
        super().__init__(f"{where}: {reason}")


class UnknownModelError(ManagerError):
    """The name is not in the catalogue (404)."""

    status, type, code, param = 404, "invalid_request_error", "model_not_found", "model"

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"model {name!r} is not in models.json; known models: {', '.join(known)}")


class RuntimeFailure(ManagerError):
    """The container runtime (Docker engine or process launcher) failed an operation (503)."""

    status, code = 503, "runtime_error"


class ShuttingDown(RuntimeFailure):
    """The manager is shutting down (a restart, usually): the proxy retries elsewhere in time."""

    code = "manager_shutting_down"


class StartFailed(ManagerError):
    """A model server did not become ready: it exited, reported failure, or timed out (503).

    `exit_code` is set when the server process/container exited; `logs` carries
    its last log lines. `str()` is the short reason; the client's message adds the
    exit code and the last `LOG_LINES_IN_ERRORS` log lines.
    """

    status, code, param = 503, "model_start_failed", "model"

    def __init__(
        self, model: str, reason: str, *, exit_code: int | None = None, logs: str = ""
    ) -> None:
        self.model, self.reason, self.exit_code, self.logs = model, reason, exit_code, logs
        short = f"model {model!r} failed to start: {reason}"
        super().__init__(short)
        text = short
        if exit_code is not None:
            text += f" (exit code {exit_code})"
        lines = [line for line in logs.splitlines() if line.strip()][-LOG_LINES_IN_ERRORS:]
        if lines:
            text += "\nlast log lines:\n" + "\n".join(lines)
        self.message = text


class GpuMemoryNotReleased(ManagerError):
    """GPU memory stayed in use after the previous model stopped (503)."""

    status, code = 503, "gpu_memory_busy"


class BusyError(ManagerError):
    """The wait queue is full, or the caller waited past the queue timeout (429)."""

    status, type, code = 429, "rate_limit_error", "busy"

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class LeaseNotFound(ManagerError):
    """The lease id is unknown: already released or expired (404)."""

    status, type, code, param = 404, "invalid_request_error", "lease_not_found", "lease_id"
