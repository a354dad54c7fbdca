"""`UpstreamKey`: the audio server answers only the holder of its upstream key, but for
``GET /health``.

The manager makes a new key whenever it launches the server and passes it in
`wire.model_server.AUDIO_API_KEY_ENV`; the proxy sends it as ``Authorization: Bearer
<key>``. Any other request without it (every path and method, ``/docs`` and unknown paths
included, before routing) gets the 401 envelope of `audioserver.errors.MissingUpstreamKey`.
``GET /health`` is open: it tells only whether the model is loaded (the contract,
`wire.model_server.AudioHealth`). Without a key configured everything is open (a server
run by hand). The mechanism is `wire.upstream_key.UpstreamKey`, shared with the image
server.
"""

from __future__ import annotations

from audioserver.errors import MissingUpstreamKey
from wire.errors import MODEL_SERVER
from wire.upstream_key import ASGIApp
from wire.upstream_key import UpstreamKey as _UpstreamKey

OPEN = (("GET", "/health"),)
"""The one request answered without the key."""


class UpstreamKey(_UpstreamKey):
    def __init__(self, app: ASGIApp, key: str | None) -> None:
        super().__init__(app, key, refusal=MissingUpstreamKey, source=MODEL_SERVER, open=OPEN)
