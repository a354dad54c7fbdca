"""The real `mcp` client SDK, as the MCP tests use it: sessions over Streamable HTTP (with an
API key) and over stdio (``python -m proxy.mcp``), and a progress recorder."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from mcp import ClientSession, StdioServerParameters, stdio_client, types
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
"""A raw JSON-RPC ``initialize`` request, for tests that POST to /mcp without the SDK."""


def mcp_headers(key: str, session: str | None = None) -> dict[str, str]:
    """The headers of a raw POST to /mcp with `key` (and a session's id)."""
    headers = {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2025-06-18",
    }
    return headers | ({"Mcp-Session-Id": session} if session else {})


@contextlib.asynccontextmanager
async def http_session(url: str, key: str | None) -> AsyncIterator[ClientSession]:
    """An initialised session to `url` (a proxy's /mcp) over Streamable HTTP."""
    headers = {"Authorization": f"Bearer {key}"} if key else None
    timeout = httpx2.Timeout(30.0, read=None)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@contextlib.asynccontextmanager
async def stdio_session(url: str, key: str) -> AsyncIterator[ClientSession]:
    """An initialised session to ``python -m proxy.mcp --url URL`` (key in HOMELAB_MCP_KEY)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    env["PYTHONPATH"] = str(ROOT)
    env["HOMELAB_MCP_KEY"] = key
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "proxy.mcp", "--url", url], env=env, cwd=str(ROOT)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups: the SDK's task groups wrap errors."""
    inner = getattr(exc, "exceptions", None)
    return [leaf for e in inner for leaf in leaves(e)] if inner else [exc]


@dataclass
class Recorder:
    """Collects a call's progress notifications (value, total, message)."""

    seen: list[tuple[float, float | None, str | None]] = field(default_factory=list)

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.seen.append((progress, total, message))

    @property
    def messages(self) -> list[str]:
        return [m or "" for _, _, m in self.seen]

    def rising(self) -> bool:
        values = [v for v, _, _ in self.seen]
        return all(a < b for a, b in zip(values, values[1:], strict=False))


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def pictures(result: types.CallToolResult) -> list[Image.Image]:
    """The inline pictures of a result, decoded (PIL checks they are real images)."""
    out = []
    for c in result.content:
        if isinstance(c, types.ImageContent):
            image = Image.open(io.BytesIO(base64.b64decode(c.data)))
            image.load()
            out.append(image)
    return out


def links(result: types.CallToolResult) -> list[str]:
    return [str(c.uri) for c in result.content if isinstance(c, types.ResourceLink)]


def png_data_url(width: int, height: int, colour: tuple[int, int, int] = (200, 40, 40)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
