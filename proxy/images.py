"""Image handling: n/size checks against the model's limits, and the URL store.

Model servers only return ``b64_json``. For ``response_format: "url"`` the proxy
asks the model server for ``b64_json``, keeps each image in an `ImageStore` on its
own disk and answers with an absolute URL on its own host
(``<base>/images/<id>.<ext>``, `image_url_base` says which base), valid for
``HOMELAB_IMAGE_URL_TTL`` seconds. URLs never point at the GPU PC.

An image URL is a capability, as OpenAI's are: the 192-bit id is unguessable, so the URL
works in ``<img src>`` and for clients without a key; it ends when it expires, when the
store's caps push the image out, or when its owner deletes it (``DELETE
/v1/images/<id>.<ext>``, `ImageStore.delete`): each image's owner (the name of the key
that made it) is kept beside it in ``<id>.<ext>.owner``. Images and owner files are
0600 in a 0700 folder (`wire.private`).

`ImageStore` methods do blocking file I/O: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

from proxy.errors import InvalidRequest, UpstreamError
from proxy.guard import ACCEPTED_HOST, authority, host_authority
from proxy.keys import Principal
from proxy.settings import ProxySettings
from wire.models import ModelStatus
from wire.private import private_dir, write_private

if TYPE_CHECKING:
    from proxy.context import ProxyContext

_NAME = re.compile(r"^[A-Za-z0-9_-]{32}\.(png|jpeg|webp|gif)$")
_MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
OWNER_SUFFIX = ".owner"
"""Beside each image ``<id>.<ext>``: ``<id>.<ext>.owner``, the name of the key that made it."""
UPLOAD_FORMATS = frozenset({"png", "jpeg", "webp"})
"""What /v1/images/edits takes as `image` and `mask` (the image server decodes only these)."""


def sniff_format(data: bytes) -> str | None:
    """The image format from its magic bytes, or None if it is no image we know."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def image_url_base(ctx: ProxyContext, request: HTTPConnection) -> str:
    """Where image URLs point, by one rule for the OpenAI routes, MCP and jobs:

    1. ``HOMELAB_PUBLIC_URL`` when set (``setup.sh server`` and the demo set it);
    2. else the request's scheme and the Host that `proxy.guard.Guard` accepted by name
       or as an IP address, rebuilt from its parts (never the raw header: a Host let in
       only by ``HOMELAB_ALLOWED_HOSTS=*``, or one with a malformed port, is not used);
    3. else the address the connection arrived on (the server's side of the socket).

    '' (relative URLs) only for a request that has none of these.
    """
    public = ctx.settings.public_url
    if public:
        return public
    scope = request.scope
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    accepted = scope.get("state", {}).get(ACCEPTED_HOST)
    found = host_authority(accepted) if isinstance(accepted, str) else None
    if found is None:
        server = scope.get("server")
        if server and server[0]:
            found = authority(str(server[0]), server[1])
    return f"{scheme}://{found}" if found else ""


def check_image_request(
    model: ModelStatus, n: object, size: object, response_format: object
) -> None:
    """Validate n, size and response_format against the manager's ModelStatus for an
    image model (``sizes``, ``max_n``). Raises InvalidRequest naming the param."""
    max_n = model.max_n
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidRequest("n must be a positive integer", param="n", code="invalid_n")
        if isinstance(max_n, int) and n > max_n:
            raise InvalidRequest(
                f"n={n} is more than model '{model.id}' allows (max_n={max_n})",
                param="n",
                code="invalid_n",
            )
    sizes = model.sizes
    if size is not None and size != "auto":
        if not isinstance(size, str):
            raise InvalidRequest(
                "size must be a string like '1024x1024'", param="size", code="invalid_size"
            )
        if isinstance(sizes, list) and sizes and size not in sizes:
            raise InvalidRequest(
                f"size '{size}' is not supported by model '{model.id}'; "
                f"supported sizes: {', '.join(map(str, sizes))}",
                param="size",
                code="invalid_size",
            )
    if response_format is not None and response_format not in ("url", "b64_json"):
        raise InvalidRequest(
            "response_format must be 'url' or 'b64_json'",
            param="response_format",
            code="invalid_value",
        )


class ImageStore:
    """Images kept on disk for a limited time, named by an unguessable id.

    Bounded: at most `max_count` images and `max_bytes` bytes; storing one more
    deletes the oldest first (their URLs then answer 404, as expired ones do).

    `proxy.audio.AudioStore` is the same store for generated audio: a subclass names its
    files (`NAME`, `MEDIA`) and tells their format from their bytes (`sniff`).
    """

    NAME = _NAME
    """A stored file's name, ``<id>.<ext>``; group 1 is the extension (a `MEDIA` key)."""
    MEDIA = _MEDIA
    WHAT = "an image"

    @staticmethod
    def sniff(data: bytes) -> str | None:
        """The extension for `data` by its magic bytes, None when it is not one we keep."""
        return sniff_format(data)

    def __init__(
        self,
        directory: Path,
        ttl: float,
        *,
        max_count: int = ProxySettings.default("image_store_max_count"),
        max_bytes: int = ProxySettings.default("image_store_max_bytes"),
        tighten_folder: bool = True,
    ) -> None:
        self.directory = private_dir(directory, tighten=tighten_folder)
        self.ttl = ttl
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._last_purge = 0.0

    def put(self, data: bytes, owner: str) -> str:
        """Store an image for `owner` (a key's name); returns its file name
        (``<id>.<ext>``). Blocking."""
        fmt = self.sniff(data)
        if fmt is None:
            raise UpstreamError(
                f"The model server returned data that is not {self.WHAT}",
                code="bad_image" if self.WHAT == "an image" else "bad_audio",
            )
        name = f"{secrets.token_urlsafe(24)}.{fmt}"
        # The owner first: an image is never there without it.
        write_private(self.directory / (name + OWNER_SUFFIX), owner.encode())
        write_private(self.directory / name, data)
        if time.time() - self._last_purge > 60:
            self.purge_expired()
        self.evict(keep=name)
        return name

    def evict(self, keep: str | None = None) -> int:
        """Delete the oldest images until the count and byte caps hold (`keep` last of all);
        returns how many went. Blocking."""
        entries = self._entries(keep)
        count, total = len(entries), sum(e[2] for e in entries)
        removed = 0
        for _, _, size, path in entries:
            if count <= self.max_count and total <= self.max_bytes:
                break
            self._unlink(path)
            count, total, removed = count - 1, total - size, removed + 1
        return removed

    def _entries(
        self, keep: str | None, owner: str | None = None
    ) -> list[tuple[bool, float, int, Path]]:
        """(is `keep`, mtime, size, path) of every stored file (only `owner`'s, if given),
        oldest first and `keep` last of all. Blocking."""
        entries = []
        for path in self.directory.iterdir():
            if not self.NAME.match(path.name):
                continue
            if owner is not None and self.owner(path.name) != owner:
                continue
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            entries.append((path.name == keep, info.st_mtime, info.st_size, path))
        entries.sort(key=lambda e: (e[0], e[1]))
        return entries

    @staticmethod
    def _unlink(path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_name(path.name + OWNER_SUFFIX).unlink(missing_ok=True)

    def owner(self, name: str) -> str | None:
        """The name of the key that made image `name`; None if unknown. Blocking."""
        if not self.NAME.match(name):
            return None
        try:
            return (self.directory / (name + OWNER_SUFFIX)).read_bytes().decode()
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def delete(self, name: str, who: Principal) -> bool:
        """Delete image `name` (its URL answers 404 from now on) if it is live and `who`
        owns it (`Principal.owns`: its own, or any for an admin). False otherwise, the
        same for an image that is not there and one that is another key's. Blocking."""
        if not self.NAME.match(name) or self._left(name) is None or not who.owns(self.owner(name)):
            return False
        self._unlink(self.directory / name)
        return True

    def get(self, name: str) -> tuple[bytes, str, float] | None:
        """(data, media type, seconds left) for a live image, None if unknown or expired. Blocking."""
        match = self.NAME.match(name)
        left = self._left(name) if match else None
        if match is None or left is None:
            return None
        try:
            return (self.directory / name).read_bytes(), self.MEDIA[match.group(1)], left
        except FileNotFoundError:
            return None

    def _left(self, name: str) -> float | None:
        """Seconds image `name` (a checked name) has left; None when it is not there or has
        expired (then it is deleted). Blocking."""
        path = self.directory / name
        try:
            left = path.stat().st_mtime + self.ttl - time.time()
        except FileNotFoundError:
            return None
        if left <= 0:
            self._unlink(path)
            return None
        return left

    def purge_expired(self) -> int:
        """Delete expired images (and their owner files); returns how many. Blocking."""
        self._last_purge = now = time.time()
        removed = 0
        for path in self.directory.iterdir():
            try:
                if path.stat().st_mtime + self.ttl < now:
                    if self.NAME.match(path.name):  # an image, with its owner file
                        self._unlink(path)
                        removed += 1
                    else:  # a leftover: a temporary file, an orphan owner file
                        path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue
        return removed


def urls_for(
    store: ImageStore, answer: dict[str, Any], base_url: str, owner: str
) -> dict[str, Any]:
    """Replace every ``b64_json`` item of an images answer by a ``url`` on the proxy,
    each image stored as `owner`'s.

    Blocking (writes files). Raises UpstreamError when the answer has no image data.
    """
    data = answer.get("data")
    if not isinstance(data, list):
        raise UpstreamError("The model server's images answer has no 'data' list", code="bad_image")
    out = []
    for item in data:
        b64 = item.get("b64_json") if isinstance(item, dict) else None
        if not isinstance(b64, str):
            raise UpstreamError(
                "The model server's images answer has an item without b64_json", code="bad_image"
            )
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UpstreamError(
                "The model server returned invalid base64 image data", code="bad_image"
            ) from exc
        name = store.put(raw, owner)
        new = {k: v for k, v in item.items() if k != "b64_json"}
        new["url"] = f"{base_url}/images/{name}"
        out.append(new)
    return {**answer, "data": out}
