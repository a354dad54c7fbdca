"""Request and error schemas for the OpenAPI document (documentation and fuzzing only).

The forwarding routes never validate against these: they parse only the fields
they route on and forward the body unchanged. The schemas still describe what
a client may send, so schemathesis can generate meaningful (and broken) input.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code", "source"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "source": {"type": "string", "enum": ["proxy", "manager", "model_server"]},
            },
        }
    },
}

_ERR = {"content": {"application/json": {"schema": ERROR_SCHEMA}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid request, or a model of the wrong type", **_ERR},
    401: {"description": "Missing or wrong API key", **_ERR},
    403: {"description": "A cross-site request (its Origin is not this proxy)", **_ERR},
    404: {"description": "Unknown model (the message lists the known ones)", **_ERR},
    413: {"description": "Body or upload over the limit", **_ERR},
    415: {"description": "The body is not application/json (or multipart where taken)", **_ERR},
    429: {"description": "The manager's queue is full or the wait timed out (Retry-After)", **_ERR},
    502: {"description": "The model server failed or the manager is misconfigured", **_ERR},
    503: {"description": "The manager is unreachable or the model failed to start", **_ERR},
}

_MODEL = {"type": "string", "minLength": 1, "maxLength": 200}
_STREAM = {"type": "boolean"}
_BODIES = {
    "chat": {
        "required": ["model", "messages"],
        "properties": {
            "model": _MODEL,
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {"role": {"type": "string"}, "content": {}},
                },
            },
            "stream": _STREAM,
            "max_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number"},
            "tools": {"type": "array"},
            "response_format": {"type": "object"},
        },
    },
    "completion": {
        "required": ["model", "prompt"],
        "properties": {
            "model": _MODEL,
            "prompt": {},
            "stream": _STREAM,
            "max_tokens": {"type": "integer", "minimum": 1},
        },
    },
    "embedding": {
        "required": ["model", "input"],
        "properties": {"model": _MODEL, "input": {}, "encoding_format": {"type": "string"}},
    },
    "speech": {
        "required": ["model", "input"],
        "properties": {
            "model": _MODEL,
            "input": {"type": "string", "minLength": 1},
            "voice": {"type": "string"},
            "response_format": {
                "type": "string",
                "enum": ["mp3", "opus", "aac", "flac", "wav", "pcm"],
            },
            "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0},
        },
    },
    "image": {
        "required": ["model", "prompt"],
        "properties": {
            "model": _MODEL,
            "prompt": {"type": "string"},
            "n": {"type": "integer", "minimum": 1},
            "size": {"type": "string"},
            "response_format": {"type": "string", "enum": ["url", "b64_json"]},
        },
    },
}


def body_schema(kind: str) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body of the given kind."""
    schema = {"type": "object", "additionalProperties": True, **_BODIES[kind]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def edit_schema() -> dict[str, Any]:
    """`openapi_extra` declaring the multipart body of /v1/images/edits."""
    schema = {
        "type": "object",
        "required": ["image", "prompt", "model"],
        "properties": {
            "image": {"type": "string", "format": "binary"},
            "mask": {"type": "string", "format": "binary"},
            "prompt": {"type": "string"},
            "model": _MODEL,
            "n": {"type": "integer", "minimum": 1},
            "size": {"type": "string"},
            "response_format": {"type": "string", "enum": ["url", "b64_json"]},
        },
    }
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


def audio_upload_schema(translation: bool = False) -> dict[str, Any]:
    """`openapi_extra` declaring the multipart body of /v1/audio/transcriptions (or, with
    `translation`, /v1/audio/translations: no language)."""
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary"},
        "model": _MODEL,
        "prompt": {"type": "string"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "response_format": {
            "type": "string",
            "enum": ["json", "text", "srt", "verbose_json", "vtt"],
        },
        "stream": {"type": "boolean"},
    }
    if not translation:
        properties["language"] = {"type": "string"}
    schema = {"type": "object", "required": ["file", "model"], "properties": properties}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }
