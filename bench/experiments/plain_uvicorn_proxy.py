"""The proxy's app under plain uvicorn, as it ran before issue 23 (httptools without
`wire.http_server`'s deadlines and caps, `limit_concurrency`, uvicorn's proxy-header
middleware): ``python -m bench.latency --proxy-module bench.experiments.plain_uvicorn_proxy``.
The baseline of `bench.servers`."""

from __future__ import annotations

import gc

import uvicorn

from proxy.app import create_app
from proxy.settings import ProxySettings

if __name__ == "__main__":
    s = ProxySettings()
    app = create_app(s)
    gc.freeze()
    uvicorn.run(
        app,
        host=s.proxy_host,
        port=s.proxy_port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        server_header=False,
        limit_concurrency=s.proxy_max_connections,
        timeout_keep_alive=5,
    )
