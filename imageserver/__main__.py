"""`python -m imageserver`: serve the model named by HOMELAB_IMAGE_MODEL.

Exit codes: 2 for invalid settings (one line on stderr naming the variable),
otherwise uvicorn's. The port is listening before the model starts loading;
watch `GET /health`. SIGTERM stops the server (a generation in progress is
abandoned with the process). `GET /health` is left out of the access log: the
manager asks it every few tens of milliseconds while the model loads, and the log
is for what clients did.
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from imageserver.api import create_app
from imageserver.settings import Settings
from wire import http_server

CONNECTION_LIMITS = http_server.ConnectionLimits(per_address=64, max_connections=256)
"""The image server's clients are the proxy and the manager's readiness probe: few
connections (docs/security.md)."""


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        print(f"imageserver: invalid settings:\n{Settings.describe(exc)}", file=sys.stderr)
        raise SystemExit(2) from exc


class _NoHealthChecks(logging.Filter):
    """Drops uvicorn access-log records of `GET /health`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) >= 3 and args[2] == "/health")


def main() -> None:
    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("uvicorn.access").addFilter(_NoHealthChecks())
    uvicorn.Server(
        http_server.config(
            create_app(settings),
            settings.host,
            settings.port,
            CONNECTION_LIMITS,
            log_level=settings.log_level,
            timeout_graceful_shutdown=5,
        )
    ).run()


if __name__ == "__main__":
    main()
