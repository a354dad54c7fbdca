"""`python -m proxy`: run the proxy with uvicorn (`wire.http_server`: uvloop, httptools and
the connection deadlines);
`python -m proxy keys ...`: manage the named keys (`proxy.keys_cli`);
`python -m proxy hosts ...`: the GPU hosts in the catalogue (`proxy.hosts_cli`)."""

from __future__ import annotations

import gc
import logging
import sys

import uvicorn
from pydantic import ValidationError

from proxy.app import create_app
from proxy.catalogue import CatalogueError
from proxy.keyfile import KeyFileError
from proxy.settings import ProxySettings
from wire import http_server


def main() -> None:
    if sys.argv[1:2] == ["keys"]:
        from proxy.keys_cli import run

        sys.exit(run(sys.argv[2:]))
    if sys.argv[1:2] == ["hosts"]:
        from proxy.hosts_cli import run as run_hosts

        sys.exit(run_hosts(sys.argv[2:]))
    try:
        settings = ProxySettings()
    except ValidationError as exc:
        print(f"proxy: invalid settings:\n{ProxySettings.describe(exc)}", file=sys.stderr)
        sys.exit(2)
    if settings.api_keys is None and not settings.key_path().exists():
        print(
            "proxy: no API keys: add named keys (python -m proxy keys add NAME, into "
            f"{settings.key_path()}), or set HOMELAB_API_KEYS=key1,key2 (each at least 16 "
            "characters), or HOMELAB_API_KEYS=off to let everyone who reaches the proxy use "
            "the models",
            file=sys.stderr,
        )
        sys.exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
    except CatalogueError as exc:
        print(f"proxy: invalid catalogue (HOMELAB_CATALOGUE): {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyFileError as exc:  # names the file, the key and the reason
        print(f"proxy: bad key file: {exc}", file=sys.stderr)
        sys.exit(2)
    # The objects made so far (about 130k: the imports and the app) leave the collector's
    # view. A full collection of them paused the event loop for 120-165 ms now and then,
    # which was the proxy's worst latency (bench.latency's p99 at one client).
    gc.freeze()
    uvicorn.Server(
        http_server.config(
            app,
            settings.proxy_host,
            settings.proxy_port,
            settings.connection_limits(),
            log_level=settings.log_level,
            access_log=settings.access_log,
        )
    ).run()


if __name__ == "__main__":
    main()
