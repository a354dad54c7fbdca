"""Pictures in and out of the MCP tools.

In: an image argument is one of this proxy's image URLs (``…/images/<id>.<ext>``,
read from the proxy's `ImageStore`), a data URL, or plain base64. Its bytes must be
a PNG, JPEG, WebP or GIF file of at most the proxy's upload limit
(``HOMELAB_MAX_UPLOAD_BYTES``, as on ``/v1/images/edits``). Foreign http(s) URLs are
never fetched by the proxy.

Out: every generated picture is stored in the `ImageStore` and returned as a
resource link to its proxy URL; it is also inlined as MCP image content only when
its base64 fits `INLINE_LIMIT`, because MCP clients refuse large events (the
Python SDK: 1 MiB per server-sent event).
"""

from __future__ import annotations

import asyncio
import base64
import re
from urllib.parse import urlsplit

from mcp import types

from proxy.images import ImageStore, sniff_format
from proxy.mcp.tools import ArgumentError, b64decode_strict

INLINE_LIMIT = 256 * 1024
"""Largest picture (bytes of base64, all pictures of one answer together) sent inline."""

_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w-]+=[^;,]*)*;base64,", re.IGNORECASE)
_OWN_PATH = re.compile(r"^/images/([A-Za-z0-9_-]{32}\.(?:png|jpeg|webp|gif))$")


def is_http_url(value: str) -> bool:
    return value.strip().startswith(("http://", "https://"))


def is_own_image_url(value: str) -> bool:
    """An http(s) URL whose path is one of this proxy's image paths."""
    return is_http_url(value) and _OWN_PATH.match(urlsplit(value.strip()).path) is not None


async def read_image(store: ImageStore, value: str, param: str, limit: int) -> bytes:
    """The bytes of an image argument; raises ArgumentError naming `param`.

    http(s) URLs are accepted only when they are this proxy's own image URLs (any
    host: the 192-bit id is what identifies the picture).
    """
    value = value.strip()
    if is_http_url(value):
        match = _OWN_PATH.match(urlsplit(value).path)
        if not match:
            raise ArgumentError(
                param, "an http(s) URL must be an image URL this proxy returned (…/images/<id>.png)"
            )
        found = await asyncio.to_thread(store.get, match.group(1))
        if found is None:
            raise ArgumentError(param, "that image URL has expired or never existed here")
        data = found[0]
    else:
        head = _DATA_URL.match(value[:300])
        if value.startswith("data:") and head is None:
            raise ArgumentError(param, "a data URL must be base64: data:image/png;base64,...")
        encoded = value[head.end() :] if head else value
        if len(encoded) > limit * 4 // 3 + 8:
            raise ArgumentError(param, f"the image is larger than {limit} bytes")
        data = b64decode_strict(encoded, param)
    if len(data) > limit:
        raise ArgumentError(param, f"the image is larger than {limit} bytes")
    if sniff_format(data) is None:
        raise ArgumentError(param, "is not a PNG, JPEG, WebP or GIF image")
    return data


def data_url(data: bytes) -> str:
    return f"data:image/{sniff_format(data) or 'png'};base64,{base64.b64encode(data).decode()}"


def picture_content(
    pictures: list[tuple[str, str]], base_url: str | None
) -> list[types.TextContent | types.ImageContent | types.ResourceLink]:
    """MCP content for generated pictures: (stored name, base64) pairs.

    Each picture gets a resource link to its proxy URL (when the proxy's address is
    known) and, while the answer stays under `INLINE_LIMIT`, inline image content.
    """
    out: list[types.TextContent | types.ImageContent | types.ResourceLink] = []
    inline_left = INLINE_LIMIT
    for i, (name, b64) in enumerate(pictures):
        media = "image/" + name.rsplit(".", 1)[-1]
        if len(b64) <= inline_left:
            inline_left -= len(b64)
            out.append(types.ImageContent(type="image", data=b64, mime_type=media))
        if base_url:
            out.append(
                types.ResourceLink(
                    type="resource_link",
                    uri=f"{base_url}/images/{name}",
                    name=f"picture-{i + 1}",
                    mime_type=media,
                    description="The picture on the proxy (expires; see HOMELAB_IMAGE_URL_TTL).",
                )
            )
    return out
