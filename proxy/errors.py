"""The proxy's one exception tree, and the OpenAI error envelope every client sees.

Every error leaves the proxy as ``{"error": {"message", "type", "param", "code",
"source"}}`` where ``source`` says which component is at fault: ``"proxy"`` (the
request was refused here), ``"manager"`` (the manager refused it or is
unreachable) or ``"model_server"`` (vLLM / the image server failed or answered
an error). Lower layers raise these; the HTTP layer turns them into responses
with the handlers of `wire.errors` (each class carries its status, type and code).
Foreign exceptions (aiohttp, OSError) are wrapped with ``raise X from exc``.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any

import orjson

from wire.errors import MANAGER as MANAGER
from wire.errors import MODEL_SERVER as MODEL_SERVER
from wire.errors import PROXY as PROXY
from wire.errors import ApiError, Source

KEYLESS: ContextVar[bool] = ContextVar("keyless", default=False)
"""True while answering a request that proved no API key (the proxy is open, or the
path needs none: /readyz, the page, images): its error messages are `redact`ed.
Set by `proxy.auth.ApiKeyMiddleware` for each request."""

_INTERNAL = re.compile(
    r"\b(?:https?|unix)://[^\s'\",;)]+"  # URLs
    r"|\[?[\w.:-]*[\w\]]:\d{2,5}\b"  # host:port (aiohttp: "Cannot connect to host h:p")
    r"|\('[^']*', \d+(?:, \d+, \d+)?\)"  # socket address tuples ('10.0.0.5', 8001)
)
_LOG_TAIL = re.compile(r"\n\s*last log lines:.*", re.DOTALL)


def redact(message: str) -> str:
    """`message` without internal addresses (the manager's, the model servers') and
    without a model server's log lines: what a client without a key may read."""
    message = _LOG_TAIL.sub(" (details in the manager's log)", message)
    return _INTERNAL.sub("<internal address>", message)


class ProxyError(ApiError):
    """Base of every error the proxy raises on purpose. Carries its HTTP answer
    (`wire.errors.ApiError`); ``source`` is the proxy unless a subclass says otherwise.
    Its message is `redact`ed for a client that proved no key (`KEYLESS`)."""

    status, type, code = 500, "server_error", "internal_error"
    source: Source | None = PROXY

    def envelope(self, source: Source | None = None) -> dict[str, Any]:
        body = super().envelope(source)
        if KEYLESS.get():
            body["error"]["message"] = redact(body["error"]["message"])
        return body


class InvalidRequest(ProxyError):
    """The request is malformed or asks for something the model cannot do (400)."""

    status, type, code = 400, "invalid_request_error", "invalid_request"


class AuthenticationFailed(ProxyError):
    """Missing or wrong API key (401)."""

    status, type, code = 401, "authentication_error", "invalid_api_key"


class KeyRevoked(AuthenticationFailed):
    """The key that submitted a job is no longer in the key ring when the job runs (401)."""

    code = "key_revoked"


class NotFound(ProxyError):
    """Unknown model, route or image (404)."""

    status, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFound(NotFound):
    """An unknown model, or one the caller's key may not use (the same answer: a hidden
    model's existence is not revealed). `known`: the models the caller may use, listed in
    the message (None: no list)."""

    def __init__(self, name: str, known: list[str] | None) -> None:
        message = f"The model '{name}' does not exist."
        if known is not None:
            message += f" Known models: {', '.join(known) if known else '(none)'}"
        super().__init__(message, param="model", code="model_not_found")


SERVES = {
    "text": "/v1/chat/completions and /v1/completions",
    "embedding": "/v1/embeddings",
    "image": "/v1/images/generations and /v1/images/edits",
    "stt": "/v1/audio/transcriptions and /v1/audio/translations",
    "tts": "/v1/audio/speech and /v1/audio/voices",
}
"""The endpoints each model type serves, as a client reads them."""


class WrongModelType(InvalidRequest):
    """A model asked for an endpoint its type does not serve (400): a text model for
    images or embeddings, an embedding model for chat, ... `fitting`: the models that do
    serve `endpoint`, named in the message."""

    def __init__(
        self, name: str, model_type: str, endpoint: str, fitting: list[str] | None = None
    ) -> None:
        serves = SERVES.get(model_type, "other endpoints")
        message = (
            f"The model '{name}' is a{'n' if model_type[:1] in 'aeiou' else ''} {model_type} "
            f"model and cannot serve {endpoint}; it serves {serves}."
        )
        if fitting is not None:
            message += f" Models for {endpoint}: {', '.join(fitting) or '(none configured)'}."
        super().__init__(message, param="model", code="wrong_model_type")


class FileQuotaExceeded(ProxyError):
    """Keeping one more file would pass a file quota: the key's own
    (``HOMELAB_FILE_QUOTA_BYTES``, code ``key_file_quota_exceeded``) or all keys' together
    (``HOMELAB_FILES_TOTAL_BYTES``, ``total_file_quota_exceeded``). 429 with type
    ``insufficient_quota``, as OpenAI answers a spent quota, and ``x-should-retry: false``
    (the openai SDK would otherwise send the upload twice more: it frees only as files
    are deleted or expire)."""

    status, type, code = 429, "insufficient_quota", "key_file_quota_exceeded"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param, code=code, headers={"x-should-retry": "false"})


class TooManyStreams(ProxyError):
    """The key has ``HOMELAB_MAX_STREAMS_PER_KEY`` job streams open already (429)."""

    status, type, code = 429, "rate_limit_error", "too_many_streams"


class UnsupportedMediaType(ProxyError):
    """The body's Content-Type is not what the endpoint takes (415)."""

    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class UnsupportedAudio(UnsupportedMediaType):
    """An uploaded file that is not audio of a known format, by its first bytes (415)."""

    code = "unsupported_audio_format"


class ManagerUnavailable(ProxyError):
    """The manager could not be reached or answered nonsense (503)."""

    status, type, code, source = 503, "server_error", "manager_unavailable", MANAGER


class ManagerUnreachable(ManagerUnavailable):
    """The manager could not be reached at all (connection refused, dropped or timed out):
    an outage the proxy rides out (`proxy.manager_client`), unlike an answer it cannot use."""


class ManagerRefused(ProxyError):
    """The manager answered an error; status, envelope and Retry-After are kept."""

    source = MANAGER


class UpstreamError(ProxyError):
    """The model server failed, was unreachable or answered an error."""

    status, type, code, source = 502, "server_error", "model_server_error", MODEL_SERVER


class EndpointUnavailable(UpstreamError):
    """A remote endpoint of the proxy's catalogue could not be reached (503)."""

    status, code = 503, "endpoint_unavailable"


def normalise_error_body(raw: bytes, status: int, source: Source) -> ProxyError:
    """Turn a foreign error answer (vLLM's, the manager's, FastAPI's) into a ProxyError.

    Understands ``{"error": {...}}`` (OpenAI and recent vLLM), ``{"object": "error",
    "message": ...}`` (older vLLM) and ``{"detail": ...}`` (FastAPI). The status is kept
    for 4xx; a 5xx other than 503/504 becomes 502 (the proxy's gateway failed).
    """
    message, etype, param, code = None, None, None, None
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        inner: dict[str, Any] = error if isinstance(error, dict) else data
        message = inner.get("message") if isinstance(inner.get("message"), str) else None
        if message is None and "detail" in data:
            message = str(data["detail"])[:2000]
        etype = inner.get("type") if isinstance(inner.get("type"), str) else None
        param = inner.get("param") if isinstance(inner.get("param"), str) else None
        code = inner.get("code") if isinstance(inner.get("code"), str | int) else None
    if message is None:
        text = raw[:500].decode("utf-8", "replace").strip()
        message = f"HTTP {status} from the {source.replace('_', ' ')}" + (
            f": {text}" if text else ""
        )
    out_status = status if status < 500 or status in (503, 504) else 502
    if out_status >= 500:
        etype = "server_error"
    elif etype is None or not etype.endswith("_error"):
        # vLLM says "BadRequestError"/"NotFoundError": map to OpenAI's type names.
        etype = "authentication_error" if status == 401 else "invalid_request_error"
    return ProxyError(
        message,
        param=param,
        status=out_status,
        type=etype,
        code=str(code) if code is not None else f"{source}_error",
        source=source,
    )
