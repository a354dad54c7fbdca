"""The audio server's one exception tree.

Every class carries its HTTP status, the OpenAI error `type` and `code` a client sees,
and the `param` it is about: `wire.errors.ApiError`, answered by the handlers
`audioserver.api` installs from `wire.errors` (``"source": "model_server"``). Lower
layers wrap foreign exceptions (PyAV's, CTranslate2's, onnxruntime's) with
``raise X from exc``.
"""

from __future__ import annotations

from wire.errors import TOO_LARGE_CODE, TOO_LARGE_STATUS, ApiError

LOADING_RETRY_AFTER = 5
"""Retry-After (seconds) while the model is still loading."""


class AudioServerError(ApiError):
    """Base of every error the audio server raises on purpose (500 unless a subclass says)."""

    status, type, code = 500, "server_error", "server_error"


class InvalidRequest(AudioServerError):
    """A bad parameter: an unknown response_format, a language the model lacks, ... (400)"""

    status, type, code = 400, "invalid_request_error", "invalid_request"


class WrongEndpoint(InvalidRequest):
    """This server's model does the other thing (a tts voice asked to transcribe) (400)."""

    code = "wrong_model_type"


class UploadTooLarge(InvalidRequest):
    """The uploaded audio is over `max_upload_bytes`: 413 ``request_too_large``, the one
    "too large" answer of every program (`wire.errors`)."""

    status, code = TOO_LARGE_STATUS, TOO_LARGE_CODE


class UnsupportedAudio(InvalidRequest):
    """The upload is not audio of a known container, by its first bytes (415)."""

    status, code = 415, "unsupported_audio_format"


class UndecodableAudio(InvalidRequest):
    """The upload looks like audio but cannot be decoded, or holds no sound (422)."""

    status, code = 422, "invalid_audio"


class MissingUpstreamKey(AudioServerError):
    """A request without the manager's per-start key (`audioserver.upstream_key`):
    401 ``invalid_api_key`` with ``WWW-Authenticate: Bearer``."""

    status, type, code = 401, "authentication_error", "invalid_api_key"

    def __init__(self) -> None:
        super().__init__(
            "Missing or wrong upstream key: only the homelab-ai proxy may call this server.",
            headers={"WWW-Authenticate": "Bearer"},
        )


class QueueFull(AudioServerError):
    """One request is running and `queue_limit` more are waiting (429)."""

    status, type, code = 429, "rate_limit_error", "queue_full"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ModelNotReady(AudioServerError):
    """The model is still loading (`code` model_loading, with Retry-After) or failed to
    load (model_load_failed). 503."""

    status, type = 503, "server_error"

    def __init__(self, message: str, *, failed: bool) -> None:
        super().__init__(
            message,
            code="model_load_failed" if failed else "model_loading",
            headers=None if failed else {"Retry-After": str(LOADING_RETRY_AFTER)},
        )


class LoadFailed(AudioServerError):
    """Loading or warming up the model failed; the message is the reason /health shows."""

    code = "model_load_failed"


class InferenceFailed(AudioServerError):
    """The model raised something unexpected (500, message only, no traceback)."""

    code = "inference_failed"
