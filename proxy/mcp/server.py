"""The MCP server inside the proxy, at ``/mcp`` (Streamable HTTP, SSE responses).

`McpEndpoint` builds the SDK's low-level ``Server`` with two handlers: ``tools/list``
(generated from the manager's model list on every call, so the enums follow
models.json) and ``tools/call``. Its ``session_manager`` must run for the life of the
app: `create_app` enters `McpEndpoint.running()` in the proxy's lifespan. The ASGI
endpoint is mounted as an exact route (``/mcp`` answers without a redirect) behind
the proxy's `ApiKeyMiddleware`, which refuses a missing or wrong key with a 401 whose
JSON-RPC error body MCP clients show.

Limits: `body_limit` is what an ``img2img`` call with an image and a mask as base64
needs at the proxy's upload limit (``HOMELAB_MAX_UPLOAD_BYTES``); the proxy's
`BodyLimit` refuses a larger ``/mcp`` body (413 ``request_too_large``, as everywhere in
the proxy) and the SDK's own limit is set to the same value. Sessions: at most
``HOMELAB_MCP_SESSIONS_PER_KEY`` per key (`KeyedSessions`; one more is a 429), each
ended after ``HOMELAB_MCP_SESSION_IDLE_TIMEOUT`` seconds with no request in flight. The SDK's DNS-rebinding (Host / Origin) check follows
``HOMELAB_ALLOWED_HOSTS``: off when unset, as the rest of the proxy accepts any Host.

Every failure of a call is an ``isError`` result whose text says what went wrong (a
bad argument is named); anything unexpected is logged and answered with a short
message, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
from mcp import MCPError, types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.context import ProxyContext
from proxy.errors import ProxyError
from proxy.images import image_url_base
from proxy.keys import NOBODY, PRINCIPAL, Principal, visible
from proxy.mcp import handlers
from proxy.mcp.progress import Progress
from proxy.mcp.tools import (
    ToolFailure,
    parse_embed,
    parse_img2img,
    parse_img2txt,
    parse_list_models,
    parse_speech2txt,
    parse_txt2img,
    parse_txt2speech,
    parse_txt2txt,
    tool_list,
)
from proxy.settings import ProxySettings

log = logging.getLogger("proxy.mcp")

INSTRUCTIONS = (
    "homelab-ai: the models of one home lab behind one endpoint. txt2txt chats with a text "
    "model, txt2img paints, img2img edits a picture, img2txt asks a vision model about a "
    "picture, embed turns texts into vectors (and says how similar they are), speech2txt "
    "transcribes a recording, txt2speech speaks a text, list_models "
    "says what exists and what is loaded. Models share the GPU within "
    "its memory budget, so the first call for a model that is not loaded waits while it "
    "loads (and others unload if it does not fit); progress notifications say so."
)


def body_limit(settings: ProxySettings) -> int:
    """Largest /mcp request body: an image plus a mask of together HOMELAB_MAX_UPLOAD_BYTES,
    as base64 (4/3), plus room for the prompt and the JSON-RPC envelope."""
    return settings.max_upload_bytes * 4 // 3 + 256 * 1024


def _failure_text(exc: ProxyError) -> str:
    where = {"proxy": "the proxy", "manager": "the manager", "model_server": "the model server"}
    source = exc.source or "proxy"
    text = f"{exc.message} (from {where.get(source, source)}"
    if exc.param:
        text += f"; argument '{exc.param}'"
    retry = exc.headers.get("Retry-After")
    if retry:
        text += f"; retry after {retry} s"
    return text + ")"


class KeyedSessions(StreamableHTTPSessionManager):
    """The SDK's session manager with a cap per key: `per_key` sessions of one principal
    (the ``client_id`` `McpEndpoint` gives each request) at once.

    `McpEndpoint.__call__` refuses an opening request over the cap with a 429 before the
    SDK sees it; `_admit_session` (the SDK's admission, under its creation lock) checks
    again, so two opening requests at once cannot both pass (the second then gets the
    SDK's own 503). Idle sessions end after the SDK's ``session_idle_timeout``."""

    def __init__(self, *args: Any, per_key: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_key = per_key

    def open_for(self, name: str) -> int:
        """Sessions of principal `name` open now."""
        return sum(1 for o in self._session_owners.values() if o["client_id"] == name)

    def _admit_session(self, requestor: Any) -> Any:
        if requestor is not None and self.open_for(requestor["client_id"]) >= self.per_key:
            return None
        return super()._admit_session(requestor)


class McpEndpoint:
    """The MCP server, its session manager and the ASGI endpoint for ``/mcp``."""

    def __init__(self, settings: ProxySettings, get_ctx: Callable[[], ProxyContext]) -> None:
        self.settings = settings
        self._get_ctx = get_ctx
        self.limit = body_limit(settings)
        self.server: Server[Any] = Server(
            "homelab-ai",
            version="0.1.0",
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        hosts = list(settings.allowed_hosts)
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=bool(hosts),
            allowed_hosts=hosts,
            allowed_origins=[f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")],
        )
        self.sessions = KeyedSessions(
            app=self.server,
            json_response=False,  # SSE responses: progress notifications need them
            security_settings=security,
            max_request_body_size=self.limit,
            session_idle_timeout=settings.mcp_session_idle_timeout,
            per_key=settings.mcp_sessions_per_key,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the session manager (enter once, in the app's lifespan)."""
        async with self.sessions.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI endpoint (the proxy's `BodyLimit` has checked the body against `limit`).

        Each session belongs to the key that opened it: the SDK's session manager keeps
        the ``scope["user"]`` of the opening request and answers a request of any other
        user on that ``Mcp-Session-Id`` exactly as an unknown session (404 "Session not
        found"). The user is the key's principal name (`proxy.keys`), never the key."""
        principal = scope.get("state", {}).get("principal", NOBODY)
        scope["user"] = AuthenticatedUser(
            AccessToken(token="", client_id=principal.name, scopes=[])
        )
        opening = scope.get("method") == "POST" and not any(
            name == b"mcp-session-id" for name, _ in scope.get("headers", ())
        )
        cap = self.sessions.per_key
        if opening and self.sessions.open_for(principal.name) >= cap:
            refusal = _too_many_sessions(cap)
            await refusal(scope, receive, send)
            return
        await self.sessions.handle_request(scope, receive, send)

    # -- handlers ---------------------------------------------------------------

    async def _list_tools(
        self, rctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        with _as_caller(rctx):
            return await self._tools()

    async def _tools(self) -> types.ListToolsResult:
        try:
            models = await self._get_ctx().manager.models()
        except ProxyError as exc:
            raise _rpc_failure(exc) from exc
        return types.ListToolsResult(tools=tool_list(visible(models)))  # the key's models

    def _base_url(self, rctx: ServerRequestContext[Any]) -> str | None:
        request = rctx.request
        return image_url_base(self._get_ctx(), request) if request is not None else None

    async def _call_tool(
        self, rctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        with _as_caller(rctx):
            return await self._call(rctx, params)

    async def _call(
        self, rctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        ctx = self._get_ctx()
        args = params.arguments or {}
        progress = Progress(rctx.session.report_progress)
        try:
            models = visible(await ctx.manager.models())  # another is as unknown
            match params.name:
                case "txt2txt":
                    return await handlers.run_txt2txt(ctx, parse_txt2txt(models, args), progress)
                case "img2txt":
                    return await handlers.run_img2txt(ctx, parse_img2txt(models, args), progress)
                case "txt2img":
                    parsed = parse_txt2img(models, args)
                    return await handlers.run_txt2img(ctx, parsed, progress, self._base_url(rctx))
                case "img2img":
                    edit = parse_img2img(models, args)
                    return await handlers.run_img2img(ctx, edit, progress, self._base_url(rctx))
                case "embed":
                    return await handlers.run_embed(ctx, parse_embed(models, args), progress)
                case "speech2txt":
                    heard = parse_speech2txt(models, args)
                    return await handlers.run_speech2txt(ctx, heard, progress)
                case "txt2speech":
                    speech = parse_txt2speech(models, args)
                    return await handlers.run_txt2speech(
                        ctx, speech, progress, self._base_url(rctx)
                    )
                case "list_models":
                    parse_list_models(args)
                    return await handlers.run_list_models(ctx)
                case _:
                    raise ToolFailure(
                        f"Unknown tool '{params.name}'; the tools are txt2txt, txt2img, img2img, "
                        "img2txt, embed, speech2txt, txt2speech and list_models."
                    )
        except ToolFailure as exc:
            return _error_result(exc.message)
        except ProxyError as exc:
            return _error_result(_failure_text(exc))
        except Exception:
            log.exception("MCP tool %s failed unexpectedly", params.name)
            return _error_result(
                f"Internal error in the proxy while running {params.name}; see its log."
            )


@contextlib.contextmanager
def _as_caller(rctx: ServerRequestContext[Any]) -> Iterator[None]:
    """`proxy.keys.PRINCIPAL` set to the principal of the HTTP request that carried this
    message (a session's handlers run in the task of the request that opened it)."""
    request = rctx.request
    state = request.scope.get("state", {}) if request is not None else {}
    principal = state.get("principal")
    if not isinstance(principal, Principal):  # never through the key middleware: nobody
        principal = NOBODY
    token = PRINCIPAL.set(principal)
    try:
        yield
    finally:
        PRINCIPAL.reset(token)


def _error_result(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def _rpc_failure(exc: ProxyError) -> MCPError:
    return MCPError(code=-32603, message=_failure_text(exc))


def _too_many_sessions(cap: int) -> Response:
    """429 with a JSON-RPC error body (what MCP clients show), no request id."""
    message = (
        f"This key has {cap} MCP sessions open already (HOMELAB_MCP_SESSIONS_PER_KEY): "
        "close one (DELETE /mcp with its Mcp-Session-Id), or wait for an idle one to end "
        "(HOMELAB_MCP_SESSION_IDLE_TIMEOUT)."
    )
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}}
    return Response(orjson.dumps(body), status_code=429, media_type="application/json")
