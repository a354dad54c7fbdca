"""The OpenAI error envelope every client sees, and the one way to answer with it.

Every error any of the programs sends is
``{"error": {"message", "type", "param", "code", "source"}}``; ``source`` says which
component produced it: ``"proxy"``, ``"manager"`` or ``"model_server"``.

`ApiError` is the base of each program's exception tree: a class carries its HTTP
status, OpenAI ``type``, ``code`` and the ``param`` it is about (and, per instance,
headers such as ``Retry-After``), so no program maps exceptions to statuses with an
``isinstance`` chain. `install_error_handlers(app, source, ...)` gives an app the one
set of handlers:

- an `ApiError` -> its own status and envelope (``source``: the error's own, else the app's);
- an HTTP error raised by routing -> 404 ``not_found`` ("No such endpoint: METHOD PATH"),
  405 ``method_not_allowed``, 413 ``request_too_large``, other statuses ``http_<status>``;
- a request validation error -> 400 ``invalid_request``. The one rule for ``param``: the
  dotted location of the first problem inside the body, query or path
  (``"messages.0.content"``, ``"tail"``), None when the body is not JSON at all;
- anything else -> a logged 500 ``internal_error``, never a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

log = logging.getLogger("wire.errors")

Source = Literal["proxy", "manager", "model_server"]
PROXY: Source = "proxy"
MANAGER: Source = "manager"
MODEL_SERVER: Source = "model_server"

TOO_LARGE_STATUS = 413
TOO_LARGE_CODE = "request_too_large"
"""The one answer for a body or upload over a limit, in every program (docs/api.md)."""

_LOCATIONS = ("body", "query", "path", "header", "cookie")
_HTTP_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: TOO_LARGE_CODE,
    415: "unsupported_media_type",
}


class ErrorDetail(BaseModel):
    """The inside of the envelope. Unknown keys are kept (lenient when reading)."""

    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None = None
    code: str | None = None
    source: Source | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorDetail


def envelope(
    message: str,
    *,
    type: str,
    code: str | None,
    source: Source | None,
    param: str | None = None,
) -> dict[str, Any]:
    """The envelope as a dict, ready for JSON."""
    return {
        "error": {
            "message": message,
            "type": type,
            "param": param,
            "code": code,
            "source": source,
        }
    }


def dumps(content: Any) -> bytes:
    """Compact UTF-8 JSON, exactly as starlette's JSONResponse renders it."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


class ApiError(Exception):
    """An error with its HTTP answer. Subclasses set `status`, `type`, `code` (and `param`);
    any of them, and headers, may be given per instance."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    param: str | None = None
    source: Source | None = None
    """None: the source of the app that answers (given to `install_error_handlers`)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        source: Source | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        if source is not None:
            self.source = source
        self.headers: dict[str, str] = dict(headers or {})

    def envelope(self, source: Source | None = None) -> dict[str, Any]:
        return envelope(
            self.message,
            type=self.type,
            code=self.code,
            param=self.param,
            source=self.source or source,
        )

    def body(self, source: Source | None = None) -> bytes:
        return dumps(self.envelope(source))

    def response(self, source: Source | None = None) -> Response:
        return Response(
            self.body(source),
            status_code=self.status,
            media_type="application/json",
            headers=self.headers,
        )

    async def send(self, send: Send, source: Source | None = None) -> None:
        """Answer on a raw ASGI `send` (pure ASGI middleware and responses)."""
        await send_json(send, self.status, self.body(source), self.headers)


async def send_json(
    send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    """A whole JSON response on a raw ASGI `send`."""
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class InvalidRequest(ApiError):
    """A malformed request (400)."""

    status, type, code = 400, "invalid_request_error", "invalid_request"


class RequestTooLarge(ApiError):
    """A body or upload over a limit: 413 ``request_too_large`` in every program."""

    status, type, code = TOO_LARGE_STATUS, "invalid_request_error", TOO_LARGE_CODE


def from_http_exception(request: Request, exc: HTTPException) -> ApiError:
    """The envelope for starlette's routing errors (unknown route, wrong method, ...)."""
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"No such endpoint: {request.method} {request.url.path}"
    else:
        message = str(exc.detail)
    return ApiError(
        message,
        status=exc.status_code,
        type="invalid_request_error" if exc.status_code < 500 else "server_error",
        code=_HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}"),
        headers=exc.headers,
    )


def from_validation_errors(errors: Sequence[Mapping[str, Any]]) -> InvalidRequest:
    """A 400 for pydantic/FastAPI validation errors, with the one `param` rule."""
    first: Mapping[str, Any] = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "decode error")
        return InvalidRequest(f"The request body is not valid JSON: {reason}")
    loc = list(first.get("loc", ()))
    if loc and loc[0] in _LOCATIONS:
        loc = loc[1:]
    param = ".".join(str(part) for part in loc) or None
    text = str(first.get("msg", "invalid request"))
    message = f"{param}: {text}" if param else text
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return InvalidRequest(message, param=param)


Observer = Callable[[Request, int], None]


def install_error_handlers(
    app: Starlette,
    source: Source,
    *,
    validation_error: type[Exception] | None = None,
    name: str | None = None,
    observe: Observer | None = None,
) -> None:
    """Give `app` the one set of exception handlers (see the module docstring).

    `validation_error` is FastAPI's ``RequestValidationError`` (wire does not import
    FastAPI); its ``errors()`` become a 400. `name` names the program in the 500
    message. `observe(request, status)` is called for every error answered (metrics).
    """
    label = name or source.replace("_", " ")

    def reply(request: Request, exc: ApiError) -> Response:
        if observe is not None:
            observe(request, exc.status)
        return exc.response(source)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return reply(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return reply(request, from_http_exception(request, exc))

    async def on_invalid(request: Request, exc: Exception) -> Response:
        errors = getattr(exc, "errors", None)
        return reply(request, from_validation_errors(errors() if callable(errors) else []))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error(
            "unexpected error in the %s on %s %s",
            label,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return reply(request, ApiError(f"Internal error in the {label}; see its log."))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_error)
    if validation_error is not None:
        app.add_exception_handler(validation_error, on_invalid)
    app.add_exception_handler(Exception, on_unexpected)
