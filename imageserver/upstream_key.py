"""`UpstreamKey`: the image server answers only the holder of its upstream key.

The manager makes a new key whenever it launches the server and passes it in
`HOMELAB_IMAGE_API_KEY` (`wire.model_server.IMAGE_API_KEY_ENV`); the proxy sends it as
`Authorization: Bearer <key>`. Any request without it (every path and method, `/health`,
`/docs`, `/openapi.json` and unknown paths included, before routing) gets the 401
envelope of `imageserver.errors.MissingUpstreamKey` (`invalid_api_key`, ``source:
model_server``, written by `wire.errors` as every other error); the manager's probe
sends the key. Without a key configured everything is open (a server run by hand).
The mechanism is `wire.upstream_key.UpstreamKey`, shared with the audio server.
"""

from __future__ import annotations

from imageserver.errors import MissingUpstreamKey
from wire.errors import MODEL_SERVER
from wire.upstream_key import ASGIApp
from wire.upstream_key import UpstreamKey as _UpstreamKey


class UpstreamKey(_UpstreamKey):
    def __init__(self, app: ASGIApp, key: str | None) -> None:
        super().__init__(app, key, refusal=MissingUpstreamKey, source=MODEL_SERVER)
