"""Serving the web UI in app/: the page, its static files, and the event stream.

Contract with app/ (docs/api.md): ``GET /`` renders ``app/templates/index.html``
with ``config = {"auth_required", "version", "default_model"}`` (embed it with
``|tojson``); ``GET /static/{path}`` serves ``app/static/``; ``GET /api/events``
streams the manager's events from the proxy's one shared connection
(`proxy.event_hub`; API key needed when keys are set).
A missing template is a 503 envelope, not a crash.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from proxy.errors import ProxyError
from proxy.event_hub import EventStream
from proxy.keys import current
from proxy.openapi_docs import ERRORS
from proxy.settings import ProxySettings


def proxy_version() -> str:
    try:
        return version("homelab-ai")
    except PackageNotFoundError:
        return "0.0.0"


class UiMissing(ProxyError):
    status, type, code = 503, "server_error", "ui_missing"


def ui_config(settings: ProxySettings) -> dict[str, Any]:
    return {
        "auth_required": bool(settings.api_keys),
        "version": proxy_version(),
        "default_model": settings.default_model,
    }


def mount_ui(app: FastAPI, settings: ProxySettings) -> None:
    """Add the UI routes to `app`. Templates are (re)loaded from disk as they change."""
    templates = Path(settings.app_dir) / "templates"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        autoescape=jinja2.select_autoescape(["html"]),
        auto_reload=True,
    )
    config = ui_config(settings)

    @app.get("/", response_class=HTMLResponse, responses={503: ERRORS[503]}, summary="The web UI")
    async def index() -> Response:
        try:
            template = env.get_template("index.html")
        except jinja2.TemplateNotFound as exc:
            raise UiMissing(
                f"The web UI is not installed: {templates / 'index.html'} is missing."
            ) from exc
        return HTMLResponse(template.render(config=config))

    @app.get(
        "/api/events",
        responses={401: ERRORS[401], 503: ERRORS[503]},
        summary="The manager's model events (SSE: snapshot, state, swap), one stream shared by all",
    )
    async def events(request: Request) -> Response:
        ctx = request.app.state.ctx
        return EventStream(ctx.events, ctx.settings.sse_heartbeat, current())

    app.mount(
        "/static",
        StaticFiles(directory=Path(settings.app_dir) / "static", check_dir=False),
        name="static",
    )
