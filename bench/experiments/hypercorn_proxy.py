"""The proxy's app under hypercorn (asyncio with uvloop, h11) instead of uvicorn:
``python -m bench.latency --proxy-module bench.experiments.hypercorn_proxy``."""

from __future__ import annotations

import asyncio
import gc

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config

from proxy.app import create_app
from proxy.settings import ProxySettings

if __name__ == "__main__":
    s = ProxySettings()
    app = create_app(s)
    gc.freeze()
    config = Config()
    config.bind = [f"{s.proxy_host}:{s.proxy_port}"]
    config.loglevel = "WARNING"
    config.keep_alive_timeout = 5
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(app, config))  # type: ignore[arg-type]
