"""The GPU PC's optional idle suspend (docs/hosts.md, "Sleeping hosts"): off unless
``./setup.sh gpu-pc --idle-suspend MINUTES`` wrote its command.

``python3 manager/idle.py --url http://127.0.0.1:8090 --env-file .env --quiet-minutes 30
-- systemctl suspend`` asks the manager for its models every `--interval` seconds and runs
the command once the host has been quiet for the quiet period: no model in use, waited for,
starting or stopping, and no pinned model resident (a pinned model is one the owner wants
ready at all times). The proxy wakes the PC again with Wake-on-LAN when a request needs it.
A manager that does not answer counts as not quiet (nothing is suspended on a guess).

Standard library only (it runs with the host's own python3, outside the manager's
container); `quiet_reason` is the decision, a pure function.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BUSY_STATES = frozenset({"starting", "stopping", "waking"})


def quiet_reason(models: Sequence[dict[str, Any]]) -> str | None:
    """None when the host is quiet, else why it is not (a model's name and what holds it)."""
    for m in models:
        name = m.get("id", "?")
        if m.get("in_flight", 0) or m.get("waiting", 0):
            return f"{name} is in use"
        if m.get("state") in BUSY_STATES:
            return f"{name} is {m.get('state')}"
        if m.get("pinned") and m.get("state") == "ready":
            return f"{name} is pinned and resident"
    return None


def token_from(env_file: Path) -> str:
    """HOMELAB_MANAGER_TOKEN from the GPU PC's .env (or the file's first line)."""
    lines = [ln.strip() for ln in env_file.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        if line.startswith("HOMELAB_MANAGER_TOKEN="):
            return line.split("=", 1)[1].strip()
    return next(ln for ln in lines if ln and not ln.startswith("#"))


def fetch(url: str, token: str) -> list[dict[str, Any]] | None:
    """The manager's model list, or None when it does not answer."""
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/models", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (our manager)
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    listed = data.get("data") if isinstance(data, dict) else None
    return listed if isinstance(listed, list) else None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="manager/idle.py", description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8090")
    p.add_argument("--env-file", type=Path, required=True)
    p.add_argument("--quiet-minutes", type=float, required=True)
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("command", nargs="+", help="what suspends this PC (after --)")
    opts = p.parse_args(argv)
    token = token_from(opts.env_file)
    quiet_since: float | None = None
    while True:
        models = fetch(opts.url, token)
        why = "the manager does not answer" if models is None else quiet_reason(models)
        now = time.monotonic()
        if why is not None:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= opts.quiet_minutes * 60:
            print(f"idle for {opts.quiet_minutes:g} min: {' '.join(opts.command)}", flush=True)
            subprocess.run(opts.command, check=False)
            quiet_since = None  # after the wake-up, a fresh quiet period
        time.sleep(opts.interval)


if __name__ == "__main__":
    sys.exit(main())
