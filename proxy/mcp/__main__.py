"""``python -m proxy.mcp --url http://SERVER:8080/mcp --key KEY``: the proxy's MCP tools over
stdio, for MCP clients that launch a local command (see docs/mcp.md).

The key may also come from ``HOMELAB_MCP_KEY`` (so it stays out of process lists and
client configs; `proxy.settings.McpBridgeSettings`; the old name ``HOMELAB_API_KEY`` is
read this release with a warning). Exits 2 for bad arguments, 1 when the proxy cannot be reached or
refuses the key (the reason on stderr).
"""

from __future__ import annotations

import argparse
import sys

import anyio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.mcp",
        description="Serve homelab-ai's MCP tools on stdio, relayed to a proxy's /mcp.",
    )
    parser.add_argument(
        "--url", required=True, help="the proxy's MCP endpoint, e.g. http://homelab:8080/mcp"
    )
    parser.add_argument("--key", help="an API key (or HOMELAB_MCP_KEY)")
    args = parser.parse_args(argv)
    if args.key is None:
        from proxy.settings import McpBridgeSettings

        env_key = McpBridgeSettings().mcp_key
        args.key = (env_key.get_secret_value() or None) if env_key is not None else None
    if not args.url.startswith(("http://", "https://")):
        parser.error("--url must be an http(s) URL, e.g. http://homelab:8080/mcp")

    from mcp import MCPError

    from proxy.mcp.relay import serve_stdio

    try:
        anyio.run(serve_stdio, args.url, args.key)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:  # an ExceptionGroup from the task groups, usually
        reason = _first_reason(exc, MCPError)
        print(f"proxy.mcp: cannot serve {args.url}: {reason}", file=sys.stderr)
        return 1
    return 0


def _first_reason(exc: BaseException, rpc_error: type[Exception]) -> str:
    """The most telling message inside a (nested) exception group."""
    stack = [exc]
    found: list[BaseException] = []
    while stack:
        current = stack.pop()
        inner = getattr(current, "exceptions", None)
        if inner:
            stack.extend(inner)
        else:
            found.append(current)
    for item in found:
        if isinstance(item, rpc_error):
            return str(getattr(item, "message", item))
    return "; ".join(f"{type(e).__name__}: {e}" for e in found) or repr(exc)


if __name__ == "__main__":
    sys.exit(main())
