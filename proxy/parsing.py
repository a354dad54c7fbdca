"""Reading client requests cheaply: bounded bodies, the few routed fields, multipart.

Only the fields the proxy routes on are looked at (model, stream, n, size,
response_format); the body is forwarded as it came. `routed_fields` reads them
without building the JSON tree (msgspec skips every other value in C while it
validates the document), so a 30 MB body costs about its own size, not the
gigabyte its Python objects would take. Every function raises `InvalidRequest` (or
`UnsupportedMediaType`) for a bad request. Body sizes are limited before any of this
runs (`wire.limits.BodyLimit`, installed by `proxy.app`).
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec
import orjson
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.types import Message

from proxy.errors import InvalidRequest, UnsupportedMediaType

MAX_MODEL_NAME = 200


async def read_body(request: Request) -> bytes:
    """The whole body. Its size is bounded by the app's `BodyLimit`: past the limit the
    read raises `wire.limits.BodyTooLarge`, which that middleware answers (413)."""
    chunks = [chunk async for chunk in request.stream()]
    if len(chunks) == 1:
        return chunks[0]
    body = b"".join(chunks)
    chunks.clear()  # the parts go now, not when the route returns
    return body


def require_json(request: Request) -> None:
    """Refuse (415) a body not declared `application/json`. A browser sends `text/plain`,
    form and multipart bodies cross-site without asking first; JSON it does not."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType(
            "This endpoint takes a JSON body: send 'Content-Type: application/json'."
        )


class Routed(msgspec.Struct):
    """The top-level fields the proxy routes on; any type (checked by the callers)."""

    model: Any = None
    stream: Any = None
    n: Any = None
    size: Any = None
    response_format: Any = None


_ROUTED = msgspec.json.Decoder(Routed)


def routed_fields(raw: bytes) -> Routed:
    """The routed fields of a JSON object body, without decoding anything else.

    Raises InvalidRequest (``invalid_json``) for a body that is not a valid JSON object.
    """
    try:
        return _ROUTED.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(
            "The request body must be a JSON object.", code="invalid_json"
        ) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc


def parse_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def model_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    if len(value) > MAX_MODEL_NAME:
        raise InvalidRequest(f"'model' is longer than {MAX_MODEL_NAME} characters.", param="model")
    return value


def check_stream(value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest("'stream' must be true or false.", param="stream")


async def parse_form(request: Request, raw: bytes, limit: int) -> FormData:
    """Parse an already-read multipart body (the caller closes the form)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data") or "boundary=" not in ctype:
        raise InvalidRequest(
            "This endpoint takes multipart/form-data (with a boundary).",
            code="invalid_content_type",
        )
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        return await Request(request.scope, replay).form(
            max_files=16, max_fields=64, max_part_size=limit
        )
    except Exception as exc:  # python-multipart and starlette raise several kinds
        raise InvalidRequest(
            f"The multipart body cannot be parsed: {exc}", code="invalid_multipart"
        ) from exc


def form_int(form: FormData, name: str) -> int | None:
    value = form.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, UploadFile) or not value.strip().isdigit():
        raise InvalidRequest(f"'{name}' must be an integer.", param=name)
    return int(value)


def form_text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise InvalidRequest(f"'{name}' must be a text field, not a file.", param=name)
    return value


async def encode_form(form: FormData, replace: dict[str, str]) -> tuple[bytes, str]:
    """Re-encode a parsed multipart form, with some text fields replaced.

    Returns (body, content type). Order, file names and part content types are kept.
    """
    boundary = "homelab" + secrets.token_hex(16)
    out = bytearray()
    seen = set()
    for name, value in form.multi_items():
        quoted = name.replace('"', "%22")
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, UploadFile):
            filename = (
                (value.filename or "upload").replace('"', "%22").replace("\r", "").replace("\n", "")
            )
            ctype = value.content_type or "application/octet-stream"
            await value.seek(0)
            data = await value.read()
            out += (
                f'Content-Disposition: form-data; name="{quoted}"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n"
            ).encode()
            out += data
        else:
            if name in replace:
                value = replace[name]
                seen.add(name)
            out += f'Content-Disposition: form-data; name="{quoted}"\r\n\r\n'.encode()
            out += value.encode()
        out += b"\r\n"
    for name, value in replace.items():
        if name not in seen:
            out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
