"""`python -m proxy`: run the proxy with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import gc
import logging
import sys

import uvicorn
from pydantic import ValidationError

from proxy.app import create_app
from proxy.settings import ProxySettings

KEEP_ALIVE = 5
"""Seconds an idle client connection is kept open."""


def describe(exc: ValidationError) -> str:
    """One line per bad setting: its variable and the reason, never the value given
    (which may be a token or a key)."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        name = f"HOMELAB_{field.split('.')[0].upper()}"
        lines.append(f"  {name}: {err['msg']}")
    return "\n".join(lines)


def main() -> None:
    try:
        settings = ProxySettings()
    except ValidationError as exc:
        print(f"proxy: invalid settings:\n{describe(exc)}", file=sys.stderr)
        sys.exit(2)
    if settings.api_keys is None:
        print(
            "proxy: no API keys: set HOMELAB_API_KEYS=key1,key2 (each at least 16 characters), "
            "or HOMELAB_API_KEYS=off to let everyone who reaches the proxy use the models",
            file=sys.stderr,
        )
        sys.exit(2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    # The objects made so far (about 130k: the imports and the app) leave the collector's
    # view. A full collection of them paused the event loop for 120-165 ms now and then,
    # which was the proxy's worst latency (bench.latency's p99 at one client).
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.proxy_host,
        port=settings.proxy_port,
        loop="uvloop",
        http="httptools",
        access_log=settings.access_log,
        server_header=False,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=KEEP_ALIVE,
    )


if __name__ == "__main__":
    main()
