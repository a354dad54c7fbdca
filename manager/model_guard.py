"""`ModelGuard`: the ASGI middleware that closes every path of vLLM's server to a request
without the server's upstream key.

vLLM's own ``--api-key`` (and ``VLLM_API_KEY``) guards only paths under ``/v1``, ``/v2``,
``/inference`` and ``/cohere`` (``GUARDED_PREFIX`` in
vllm/entrypoints/serve/middleware/authenticate.py, 0.32): ``/invocations`` (a whole chat
or embedding), ``/tokenize``, ``/detokenize``, ``/pooling``, ``/classify``, ``/score``,
``/rerank``, ``/metrics``, ``/health``, ``/version``, ``/openapi.json``, ``/docs`` and the
rest answer anyone. vLLM has no setting to widen that, but it loads ASGI middleware
named on its command line (``--middleware module.Class``, added after its own, so the
outermost): every vLLM launch (`manager.launch.text_server_args`) names
``homelab_model_guard.ModelGuard``, this file's text under that module name. It refuses
every HTTP request and WebSocket (any path, any method, before vLLM routes it) whose
``Authorization: Bearer`` is not the key in ``VLLM_API_KEY`` (compared as SHA-256
digests in constant time): 401 with the same OpenAI envelope as the image server's
(`imageserver.errors.MissingUpstreamKey`); a WebSocket is closed before it is accepted.
Without a key in the environment it refuses everything: a launch always has one.

Not imported by vLLM as ``manager.model_guard`` (vLLM's Python has no homelab-ai
packages): both runtimes write `SOURCE` (this file's text) as ``homelab_model_guard.py``
into a private folder first on the server's ``PYTHONPATH`` (the process runtime into
``<log_dir>/guard/``; the Docker runtime through its gate, manager/gate.py). So this file
uses the standard library only and runs on Python 3.9 or later.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

MODULE = "homelab_model_guard"
"""The module name the server imports this file's text as."""
MIDDLEWARE = MODULE + ".ModelGuard"
"""What vLLM's ``--middleware`` names."""
KEY_ENV = "VLLM_API_KEY"
"""The variable the guard reads the key from (the one vLLM's launch carries it in)."""
REFUSAL = json.dumps(
    {
        "error": {
            "message": (
                "Missing or wrong upstream key: only the homelab-ai proxy may call this server."
            ),
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
            "source": "model_server",
        }
    },
    separators=(",", ":"),
).encode()
"""The 401 body (the envelope of wire.errors, source ``model_server``)."""
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(REFUSAL)).encode()),
    (b"www-authenticate", b"Bearer"),
]


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ModelGuard:
    """Pure ASGI: every ``http`` and ``websocket`` scope needs the key; ``lifespan`` passes."""

    def __init__(self, app: Any, key: str | None = None) -> None:
        """`key`: the upstream key; None reads `KEY_ENV` (vLLM builds the middleware with
        the app alone)."""
        self.app = app
        if key is None:
            key = os.environ.get(KEY_ENV, "")
        self._key = _digest(key.encode()) if key else None

    def allowed(self, headers: Any) -> bool:
        """Whether the scope's headers carry ``Authorization: Bearer <key>``."""
        if self._key is None:
            return False
        for name, value in headers or ():
            if bytes(name).lower() == b"authorization":
                scheme, _, token = bytes(value).partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    _digest(token.strip()), self._key
                )
        return False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket") or self.allowed(scope.get("headers")):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 401, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": REFUSAL})


@functools.cache
def source() -> str:
    """This file's text: what the runtimes write as ``homelab_model_guard.py``."""
    return Path(__file__).read_text(encoding="utf-8")


@functools.cache
def revision() -> str:
    """A digest of `source()`: part of a vLLM spec's hash (`manager.runtime.spec_hash`), so
    a server launched without this guard, or with another text of it, is replaced."""
    return hashlib.sha256(source().encode()).hexdigest()[:12]
