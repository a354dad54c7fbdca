"""The proxy's one exception tree, and the OpenAI error envelope every client sees.

Every error leaves the proxy as ``{"error": {"message", "type", "param", "code",
"source"}}`` where ``source`` says which component is at fault: ``"proxy"`` (the
request was refused here), ``"manager"`` (the manager refused it or is
unreachable) or ``"model_server"`` (vLLM / the image server failed or answered
an error). Lower layers raise these; the HTTP layer turns them into responses
with `envelope` / `error_response`. Foreign exceptions (aiohttp, OSError) are
wrapped with ``raise X from exc``.
"""

from __future__ import annotations

import orjson
from starlette.responses import Response

PROXY, MANAGER, MODEL_SERVER = "proxy", "manager", "model_server"


class ProxyError(Exception):
    """Base of every error the proxy raises on purpose. Carries its HTTP answer."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"
    source = PROXY

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        source: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        if source is not None:
            self.source = source
        self.headers = headers or {}

    def envelope(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
                "source": self.source,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())


class InvalidRequest(ProxyError):
    """The request is malformed or asks for something the model cannot do (400)."""

    status, type, code = 400, "invalid_request_error", "invalid_request"


class AuthenticationFailed(ProxyError):
    """Missing or wrong API key (401)."""

    status, type, code = 401, "authentication_error", "invalid_api_key"


class NotFound(ProxyError):
    """Unknown model, route or image (404)."""

    status, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFound(NotFound):
    def __init__(self, name: str, known: list[str]) -> None:
        known_text = ", ".join(known) if known else "(none)"
        super().__init__(
            f"The model '{name}' does not exist. Known models: {known_text}",
            param="model",
            code="model_not_found",
        )


class WrongModelType(InvalidRequest):
    """A text model asked for images, or an image model for text (400)."""

    def __init__(self, name: str, model_type: str, endpoint: str) -> None:
        serves = (
            "/v1/chat/completions, /v1/completions and /v1/embeddings"
            if model_type == "text"
            else "/v1/images/generations and /v1/images/edits"
        )
        super().__init__(
            f"The model '{name}' is a {model_type} model and cannot serve {endpoint}; "
            f"use {serves}.",
            param="model",
            code="wrong_model_type",
        )


class PayloadTooLarge(ProxyError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class ManagerUnavailable(ProxyError):
    """The manager could not be reached or answered nonsense (503)."""

    status, type, code, source = 503, "server_error", "manager_unavailable", MANAGER


class ManagerRefused(ProxyError):
    """The manager answered an error; status, envelope and Retry-After are kept."""

    source = MANAGER


class UpstreamError(ProxyError):
    """The model server failed, was unreachable or answered an error."""

    status, type, code, source = 502, "server_error", "model_server_error", MODEL_SERVER


def error_response(exc: ProxyError) -> Response:
    return Response(
        exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers
    )


def normalise_error_body(raw: bytes, status: int, source: str) -> ProxyError:
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
        inner = data.get("error") if isinstance(data.get("error"), dict) else data
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
