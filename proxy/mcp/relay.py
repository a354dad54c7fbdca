"""A stdio MCP server that relays to a remote proxy's ``/mcp``, for MCP clients that only
launch local commands (``python -m proxy.mcp --url URL --key KEY``).

It connects to the proxy once (Streamable HTTP, the key as ``Authorization: Bearer``),
then serves the same tools on stdin/stdout: ``tools/list`` and ``tools/call`` are
passed on, progress notifications come back to the local client, and a cancelled
call is cancelled at the proxy (which withdraws it from the manager's queue). Nothing
runs models or keeps state here. The local client sees the proxy's tool errors as
they are. Diagnostics go to stderr only (stdout is the protocol).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import create_mcp_http_client

CONNECT_TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def remote_session(url: str, key: str | None) -> AsyncIterator[ClientSession]:
    """An initialised MCP client session to the proxy at `url` (its /mcp endpoint).

    Reads have no timeout: a call may wait minutes for a model swap (the proxy sends
    progress meanwhile). Raises MCPError (e.g. a refused key) or httpx2 errors.
    """
    headers = {"Authorization": f"Bearer {key}"} if key else None
    timeout = httpx2.Timeout(CONNECT_TIMEOUT, read=None)
    async with (
        create_mcp_http_client(headers=headers, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def relay_server(remote: ClientSession, instructions: str | None) -> Server[Any]:
    """A local server whose tools are the remote's."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return await remote.list_tools()

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        async def forward(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        return await remote.call_tool(
            params.name, params.arguments or {}, progress_callback=forward
        )

    return Server(
        "homelab-ai",
        version="0.1.0",
        instructions=instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve_stdio(url: str, key: str | None) -> None:
    """Relay stdin/stdout to the proxy at `url` until stdin closes."""
    async with remote_session(url, key) as remote:
        server = relay_server(remote, remote.instructions)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
