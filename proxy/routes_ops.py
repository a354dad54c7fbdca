"""The proxy's own endpoints: health, readiness, metrics, stored image URLs (read
with the URL alone; deleted by their owner's key) and generated audio files (read and
deleted by their owner's key only)."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from proxy import keys
from proxy.errors import NotFound
from proxy.openapi_docs import ERRORS

router = APIRouter()


@router.get("/healthz", summary="The proxy process is up (no auth, no manager call)")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get(
    "/readyz",
    responses={503: ERRORS[503]},
    summary="The proxy can reach the manager (its address only with an API key)",
)
async def readyz(request: Request) -> Response:
    ctx = request.app.state.ctx
    await ctx.manager.health()  # raises ManagerUnavailable -> 503 envelope (redacted if keyless)
    body: dict[str, object] = {"status": "ready"}
    if getattr(request.state, "keyed", False):  # the manager's address only for key holders
        body["manager"] = ctx.manager.base_url
        if ctx.manager.multi:
            body["hosts"] = {
                name: {"url": link.client.base_url, "up": link.up}
                for name, link in ctx.manager.links.items()
            }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics of this proxy process")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/images/{name}",
    responses={404: ERRORS[404]},
    summary="An image stored for a response_format=url answer (expires after HOMELAB_IMAGE_URL_TTL)",
)
async def stored_image(request: Request, name: str) -> Response:
    found = await asyncio.to_thread(request.app.state.ctx.images.get, name)
    if found is None:
        raise NotFound("This image does not exist or its URL has expired.", code="image_not_found")
    data, media_type, left = found
    return Response(
        data, media_type=media_type, headers={"Cache-Control": f"private, max-age={int(left)}"}
    )


@router.delete(
    "/v1/images/{name}",
    responses={401: ERRORS[401], 404: ERRORS[404]},
    summary="Delete a stored image (its URL answers 404 from now on); the key that made it, or an admin",
)
async def delete_image(request: Request, name: str) -> Response:
    """`name`: the last part of the image's URL (``<id>.<ext>``). Another key's image is a
    404, as an unknown, expired or mangled one is: whether it exists is not told."""
    images = request.app.state.ctx.images
    if not await asyncio.to_thread(images.delete, name, keys.current()):
        raise NotFound("This image does not exist or its URL has expired.", code="image_not_found")
    return Response(
        orjson.dumps({"id": name, "object": "image", "deleted": True}),
        media_type="application/json",
    )


AUDIO_NOT_FOUND = "This audio file does not exist, has expired, or is not this key's."


@router.get(
    "/v1/audio/files/{name}",
    responses={401: ERRORS[401], 404: ERRORS[404]},
    summary="A generated audio file (MCP txt2speech): the key that made it, or an admin",
)
async def stored_audio(request: Request, name: str) -> Response:
    """`name`: the last part of the link (``<id>.<ext>``). Another key's file is a 404, as
    an unknown, expired or mangled one is (proxy/audio.py)."""
    found = await asyncio.to_thread(request.app.state.ctx.audio.get_owned, name, keys.current())
    if found is None:
        raise NotFound(AUDIO_NOT_FOUND, code="audio_not_found")
    data, media_type, left = found
    return Response(
        data, media_type=media_type, headers={"Cache-Control": f"private, max-age={int(left)}"}
    )


@router.delete(
    "/v1/audio/files/{name}",
    responses={401: ERRORS[401], 404: ERRORS[404]},
    summary="Delete a generated audio file; the key that made it, or an admin",
)
async def delete_audio(request: Request, name: str) -> Response:
    if not await asyncio.to_thread(request.app.state.ctx.audio.delete, name, keys.current()):
        raise NotFound(AUDIO_NOT_FOUND, code="audio_not_found")
    return Response(
        orjson.dumps({"id": name, "object": "audio.file", "deleted": True}),
        media_type="application/json",
    )
