"""`python -m audioserver`: serve the model named by HOMELAB_AUDIO_MODEL (of the type
HOMELAB_AUDIO_TYPE, stt or tts).

Exit codes: 2 for invalid settings (one line on stderr naming the variable), otherwise
uvicorn's. The port is listening before the model starts loading; watch `GET /health`.
`GET /health` is left out of the access log (the manager asks it often while loading).
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from audioserver.api import create_app
from audioserver.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        print(f"audioserver: invalid settings:\n{Settings.describe(exc)}", file=sys.stderr)
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
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
