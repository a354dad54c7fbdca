"""The image server's one exception tree.

Every class carries its HTTP status, the OpenAI error `type` and `code` a client
sees, and the `param` it is about (or None): `wire.errors.ApiError`, answered by the
handlers `imageserver.api` installs from `wire.errors`. Lower layers wrap foreign exceptions
(`torch.OutOfMemoryError`, `PIL.UnidentifiedImageError`, diffusers' errors)
with ``raise X from exc``.
"""

from __future__ import annotations

from wire.errors import TOO_LARGE_CODE, TOO_LARGE_STATUS, ApiError

LOADING_RETRY_AFTER = 5
"""Retry-After (seconds) while the model is still loading."""


class ImageServerError(ApiError):
    """Base of every error the image server raises on purpose (500 unless a subclass says)."""

    status, type, code = 500, "server_error", "server_error"


class InvalidRequest(ImageServerError):
    """The request is malformed: a bad size, n out of range, an undecodable image, ... (400)"""

    status, type, code = 400, "invalid_request_error", "invalid_request"


class UploadTooLarge(InvalidRequest):
    """An uploaded file is over the configured limit: 413 ``request_too_large``, the one
    "too large" answer of every program (`wire.errors`)."""

    status, code = TOO_LARGE_STATUS, TOO_LARGE_CODE


class UnsupportedTask(InvalidRequest):
    """The loaded model cannot do this (an edit-only model asked to generate, or the reverse)."""

    code = "unsupported_task"


class MissingUpstreamKey(ImageServerError):
    """A request without the manager's per-start key (`imageserver.upstream_key`):
    401 ``invalid_api_key`` with ``WWW-Authenticate: Bearer``."""

    status, type, code = 401, "authentication_error", "invalid_api_key"

    def __init__(self) -> None:
        super().__init__(
            "Missing or wrong upstream key: only the homelab-ai proxy may call this server.",
            headers={"WWW-Authenticate": "Bearer"},
        )


class QueueFull(ImageServerError):
    """One generation is running and `queue_limit` more are waiting (429)."""

    status, type, code = 429, "rate_limit_error", "queue_full"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ModelNotReady(ImageServerError):
    """The pipeline is still loading (`code` model_loading, with Retry-After) or failed to
    load (model_load_failed). 503."""

    status, type = 503, "server_error"

    def __init__(self, message: str, *, failed: bool) -> None:
        super().__init__(
            message,
            code="model_load_failed" if failed else "model_loading",
            headers=None if failed else {"Retry-After": str(LOADING_RETRY_AFTER)},
        )
        self.failed = failed


class LoadFailed(ImageServerError):
    """Loading or warming up the pipeline failed; the message is the reason shown by /health."""

    code = "model_load_failed"


class OutOfMemory(ImageServerError):
    """The device ran out of memory during a generation. The server stays up (HTTP 503)."""

    status, code = 503, "out_of_memory"


class GenerationFailed(ImageServerError):
    """The pipeline raised something unexpected while generating (HTTP 500, no traceback)."""

    code = "generation_failed"


class ClientGone(ImageServerError):
    """The client left before its generation was done; nobody reads this answer (499)."""

    status, type, code = 499, "invalid_request_error", "client_closed_request"
