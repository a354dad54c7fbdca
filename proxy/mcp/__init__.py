"""The proxy's MCP server: every model in models.json as a typed tool for agents.

- `tools`: the tool list and argument checks, generated from the manager's model list;
- `calls`: one tool call through the proxy's lease pool to the model server;
- `progress`: progress notifications while a call waits (queued, loading, generating);
- `picture`: images in (URL, data URL, base64) and out (proxy URL plus a small inline PNG);
- `server`: the SDK's low-level `Server`, mounted at ``/mcp`` (Streamable HTTP);
- `relay` / ``python -m proxy.mcp``: a stdio server that relays to a remote proxy's ``/mcp``.

docs/mcp.md describes the tools and how to connect clients.
"""
