"""``python -m proxy hosts add|remove|list``: the GPU hosts in the proxy's catalogue
(`proxy.catalogue`, docs/hosts.md).

``add NAME --url URL --token-stdin`` reads the manager's token from stdin and keeps it in
``<catalogue folder>/hosts/NAME.token`` (mode 600, never printed); ``add NAME`` without
``--url`` names the host at ``HOMELAB_MANAGER_URL`` (the one-host form's host, at most
one). ``--mac`` (with ``--broadcast``) and ``--sleepable`` make it a host that is woken
with Wake-on-LAN. The rest of the file (endpoints, fallbacks) is kept as it is. The
file is ``--file``, else ``HOMELAB_CATALOGUE``, else ``<HOMELAB_STATE_DIR>/catalogue.json``;
the result is checked as the proxy checks it (`proxy.catalogue.load_catalogue`) before it
is written, atomically. The proxy reads its catalogue at start-up: restart it after a change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.catalogue import CatalogueError, load_catalogue
from proxy.settings import ProxySettings
from wire.private import private_dir, write_private
from wire.tokens import token_problem

CATALOGUE_NAME = "catalogue.json"


def default_path() -> Path:
    """The catalogue the proxy would read with this environment (or would be given)."""
    if os.environ.get("HOMELAB_CATALOGUE"):
        return Path(os.environ["HOMELAB_CATALOGUE"])
    state = os.environ.get("HOMELAB_STATE_DIR")
    base = Path(state) if state else ProxySettings.model_fields["state_dir"].default
    return Path(base) / CATALOGUE_NAME


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxy hosts", description=__doc__.split("\n")[0])
    p.add_argument("--file", type=Path, default=None, help="the catalogue (default: see above)")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add or replace a host")
    add.add_argument("name")
    add.add_argument("--url", help="the manager's URL (unset: HOMELAB_MANAGER_URL's host)")
    add.add_argument("--token-stdin", action="store_true", help="read its token from stdin")
    add.add_argument("--mac", help="its MAC address, for Wake-on-LAN")
    add.add_argument("--broadcast", help="where the magic packet goes (default 255.255.255.255)")
    add.add_argument("--sleepable", action="store_true", help="it may sleep: wake it when needed")
    remove = sub.add_parser("remove", help="remove a host")
    remove.add_argument("name")
    sub.add_parser("list", help="the hosts, one a line (never a token)")
    return p


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise CatalogueError(str(path), "", "the top level must be a JSON object")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    """Check `data` as the proxy would, then write it (0600)."""
    private_dir(path.parent, tighten=False)
    staged = path.with_name(path.name + ".new")
    write_private(staged, json.dumps(data, indent=2).encode() + b"\n")
    try:
        load_catalogue(staged)
    except CatalogueError:
        staged.unlink(missing_ok=True)
        raise
    staged.replace(path)


def run(argv: Sequence[str], stdin: Any = None) -> int:
    """Run one command; 0 on success, 2 with a message on stderr otherwise."""
    opts = parser().parse_args(argv)
    path: Path = opts.file or default_path()
    try:
        data = _read(path)
        hosts: dict[str, Any] = data.setdefault("hosts", {})
        if opts.command == "list":
            for name, listed in hosts.items():
                where = listed.get("url", "HOMELAB_MANAGER_URL")
                extra = " sleepable" if listed.get("sleepable") else ""
                print(f"{name}\t{where}{extra}")
            return 0
        if opts.command == "remove":
            if hosts.pop(opts.name, None) is None:
                print(f"proxy hosts: no host {opts.name!r} in {path}", file=sys.stderr)
                return 2
            _write(path, data)
            (path.parent / "hosts" / f"{opts.name}.token").unlink(missing_ok=True)
            return 0
        entry: dict[str, Any] = {}
        if opts.url:
            if not opts.token_stdin:
                print("proxy hosts: --url needs --token-stdin (its token)", file=sys.stderr)
                return 2
            token = (stdin or sys.stdin).readline().strip()
            problem = token_problem(token)
            if problem:
                print(f"proxy hosts: the token: {problem}", file=sys.stderr)
                return 2
            token_dir = path.parent / "hosts"
            private_dir(token_dir, tighten=False)
            write_private(token_dir / f"{opts.name}.token", token.encode() + b"\n")
            entry = {"url": opts.url, "token_file": f"hosts/{opts.name}.token"}
        if opts.mac:
            entry["mac"] = opts.mac
        if opts.broadcast:
            entry["broadcast"] = opts.broadcast
        if opts.sleepable:
            entry["sleepable"] = True
        hosts[opts.name] = entry
        _write(path, data)
    except (CatalogueError, OSError, ValueError) as exc:
        print(f"proxy hosts: {exc}", file=sys.stderr)
        return 2
    print(f"host {opts.name} in {path}; restart the proxy to use it", file=sys.stderr)
    return 0
