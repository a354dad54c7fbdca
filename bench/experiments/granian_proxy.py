"""The proxy's app under granian (ASGI interface, one worker, uvloop) instead of uvicorn:
``python -m bench.latency --proxy-module bench.experiments.granian_proxy``."""

from __future__ import annotations

import gc

from granian import Granian
from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings

from proxy.app import create_app
from proxy.settings import ProxySettings


def factory():  # type: ignore[no-untyped-def]
    app = create_app(ProxySettings())
    gc.freeze()
    return app


if __name__ == "__main__":
    s = ProxySettings()
    Granian(
        "bench.experiments.granian_proxy:factory",
        factory=True,
        address=s.proxy_host,
        port=s.proxy_port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=10_000, keep_alive=True),
        log_level="warning",
    ).serve()
