"""`python -m audioserver`: serve the model named by HOMELAB_AUDIO_MODEL (of the type
HOMELAB_AUDIO_TYPE, stt or tts).

Exit codes: 2 for invalid settings (one line on stderr naming the variable), otherwise
uvicorn's. The port is listening before the model starts loading; watch `GET /health`.
`GET /health` is left out of the access log (the manager asks it often while loading).
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from audioserver.api import create_app
from audioserver.settings import Settings
from wire import http_server


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        print(f"audioserver: invalid settings:\n{Settings.describe(exc)}", file=sys.stderr)
        raise SystemExit(2) from exc


def main() -> None:
    settings = _settings()
    http_server.serve_model_server(
        create_app(settings), settings.host, settings.port, settings.log_level
    )


if __name__ == "__main__":
    main()
