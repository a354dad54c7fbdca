"""`python -m imageserver`: serve the model named by HOMELAB_IMAGE_MODEL.

Exit codes: 2 for invalid settings (one line on stderr naming the variable),
otherwise uvicorn's. The port is listening before the model starts loading;
watch `GET /health`. SIGTERM stops the server (a generation in progress is
abandoned with the process). `GET /health` is left out of the access log: the
manager asks it every few tens of milliseconds while the model loads, and the log
is for what clients did.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from imageserver.api import create_app
from imageserver.settings import Settings
from wire import http_server


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        print(f"imageserver: invalid settings:\n{Settings.describe(exc)}", file=sys.stderr)
        raise SystemExit(2) from exc


def main() -> None:
    settings = _settings()
    http_server.serve_model_server(
        create_app(settings), settings.host, settings.port, settings.log_level
    )


if __name__ == "__main__":
    main()
