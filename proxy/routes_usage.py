"""``GET /v1/usage``: what keys used (`proxy.usage`), and who the caller is.

A key sees its own: its name, class, models, limits and usage. An admin key sees every
key's (``?key=NAME`` for one); a key that is not an admin asking for another is
answered 404, as for anything it may not see. The UI shows the caller's name from it
(``/usage``, and who you are).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from proxy.context import ProxyContext
from proxy.errors import NotFound
from proxy.keys import Principal, current
from proxy.openapi_docs import ERRORS

router = APIRouter()


def describe(who: Principal) -> dict[str, Any]:
    """A principal's settings, as a client may read them (never the key)."""
    return {
        "name": who.name,
        "admin": who.admin,
        "priority": who.priority,
        "models": list(who.models),
        "rate": who.rate,
        "concurrency": who.concurrency,
        "gpu_day": who.gpu_day,
        "gpu_month": who.gpu_month,
    }


@router.get(
    "/v1/usage",
    responses={401: ERRORS[401], 404: ERRORS[404]},
    summary="Requests, tokens and GPU-seconds per key and model (your own; an admin: all)",
)
async def usage(request: Request, key: str | None = None) -> Response:
    ctx: ProxyContext = request.app.state.ctx
    who = current()
    usage = ctx.model_calls.limits.usage
    if key is not None and key != who.name and not who.admin:
        raise NotFound(f"No key named '{key[:100]}'.", param="key", code="key_not_found")
    if key is not None:
        names: list[str] | None = [key]
    elif who.admin:
        names = sorted({p.name for p in ctx.ring.principals()} | set(usage.tallies))
    else:
        names = [who.name]
    body = {
        "object": "usage",
        "key": describe(who),
        "data": usage.report(names, time.time()),
    }
    return Response(orjson.dumps(body), media_type="application/json")
