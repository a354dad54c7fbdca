"""`python -m proxy`: run the proxy with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from proxy.app import create_app
from proxy.settings import ProxySettings

KEEP_ALIVE = 5
"""Seconds an idle client connection is kept open."""


def main() -> None:
    try:
        settings = ProxySettings()
    except ValidationError as exc:
        print(f"proxy: invalid settings:\n{exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
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
