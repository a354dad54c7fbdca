"""The image server's one exception tree. Only `imageserver.api` maps these to HTTP.

Every class carries the OpenAI error `type` and `code` a client sees, and the
`param` it is about (or None). Lower layers wrap foreign exceptions
(`torch.OutOfMemoryError`, `PIL.UnidentifiedImageError`, diffusers' errors)
with ``raise X from exc``.
"""

from __future__ import annotations


class ImageServerError(Exception):
    """Base of every error the image server raises on purpose."""

    type = "server_error"
    code = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.message, self.param = message, param
        super().__init__(message)


class InvalidRequest(ImageServerError):
    """The request is malformed: a bad size, n out of range, an undecodable image, ..."""

    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param)
        if code:
            self.code = code


class UploadTooLarge(InvalidRequest):
    """An uploaded file or the whole body is over the configured limit."""

    code = "upload_too_large"


class UnsupportedTask(InvalidRequest):
    """The loaded model cannot do this (an edit-only model asked to generate, or the reverse)."""

    code = "unsupported_task"


class QueueFull(ImageServerError):
    """One generation is running and `queue_limit` more are waiting."""

    type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelNotReady(ImageServerError):
    """The pipeline is still loading (`code` model_loading) or failed to load (model_load_failed)."""

    type = "server_error"

    def __init__(self, message: str, *, failed: bool) -> None:
        super().__init__(message)
        self.failed = failed
        self.code = "model_load_failed" if failed else "model_loading"


class LoadFailed(ImageServerError):
    """Loading or warming up the pipeline failed; the message is the reason shown by /health."""

    code = "model_load_failed"


class OutOfMemory(ImageServerError):
    """The device ran out of memory during a generation. The server stays up (HTTP 503)."""

    code = "out_of_memory"


class GenerationFailed(ImageServerError):
    """The pipeline raised something unexpected while generating (HTTP 500, no traceback)."""

    code = "generation_failed"
