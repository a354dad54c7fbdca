"""``python -m proxy keys add|list|revoke|rotate``: manage the key file (`proxy.keyfile`).

``add`` and ``rotate`` print the new key once, on stdout, and nothing else there (so
``KEY=$(python -m proxy keys add bob)`` works); the file keeps only its SHA-256. ``list``
never shows a key. ``add --key-stdin`` registers a key read from stdin instead of making
one (`setup.sh server` and the demo register the key they made as the admin). The file
is ``--file``, else ``HOMELAB_KEY_FILE``, else ``<HOMELAB_STATE_DIR>/keys.json`` (the
proxy's own rule, `proxy.settings.ProxySettings.key_path`). A running proxy picks the
change up within a second or two, without a restart.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from proxy.keyfile import (
    KeyEntry,
    KeyFileData,
    KeyFileError,
    load,
    new_key,
    now_text,
    parse,
    save,
)
from proxy.keys import CLASSES, digest
from proxy.settings import KEY_FILE_NAME, ProxySettings
from wire.tokens import token_problem


def default_path() -> Path:
    """The key file the proxy would use with this environment."""
    if os.environ.get("HOMELAB_KEY_FILE"):
        return Path(os.environ["HOMELAB_KEY_FILE"])
    state = os.environ.get("HOMELAB_STATE_DIR")
    base = Path(state) if state else ProxySettings.model_fields["state_dir"].default
    return Path(base) / KEY_FILE_NAME


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m proxy keys", description="Manage the proxy's named API keys."
    )
    top.add_argument("--file", type=Path, help="the key file (default: the proxy's)")
    sub = top.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add a key; prints it once")
    add.add_argument("name")
    add.add_argument(
        "--models", default="*", help="comma list of model name patterns (fnmatch; default *)"
    )
    add.add_argument("--priority", choices=CLASSES, default="normal")
    add.add_argument("--rate", type=_positive_int, help="requests a minute")
    add.add_argument("--concurrency", type=_positive_int, help="model calls at once")
    add.add_argument("--gpu-day", type=_positive, help="GPU-seconds a (UTC) day")
    add.add_argument("--gpu-month", type=_positive, help="GPU-seconds a (UTC) month")
    add.add_argument("--admin", action="store_true", help="sees and manages everything")
    add.add_argument("--key-stdin", action="store_true", help="register the key read from stdin")
    add.add_argument(
        "--replace",
        action="store_true",
        help="replace a key of the same name (unchanged when it is the same key and settings)",
    )
    ls = sub.add_parser("list", help="the keys' names and settings (never the keys)")
    ls.add_argument("--json", action="store_true", help="as JSON")
    revoke = sub.add_parser("revoke", help="remove a key")
    revoke.add_argument("name")
    rotate = sub.add_parser("rotate", help="a new key for a name, same settings; prints it")
    rotate.add_argument("name")
    return top


def _read(path: Path, *, missing_ok: bool) -> KeyFileData:
    if missing_ok and not path.exists():
        return KeyFileData()
    return load(path)


def _find(data: KeyFileData, name: str, path: Path) -> KeyEntry:
    for entry in data.keys:
        if entry.name == name:
            return entry
    raise KeyFileError(f"{path}: no key named {name!r}")


def _limits(e: KeyEntry) -> str:
    parts = [
        f"{e.rate}/min" if e.rate else "",
        f"{e.concurrency} at once" if e.concurrency else "",
        f"{e.gpu_day:g} GPU-s/day" if e.gpu_day else "",
        f"{e.gpu_month:g} GPU-s/month" if e.gpu_month else "",
    ]
    return ", ".join(p for p in parts if p) or "-"


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    path: Path = args.file or default_path()
    try:
        if args.command == "list":
            data = _read(path, missing_ok=True)
            if args.json:
                rows = [
                    {k: v for k, v in msgspec.structs.asdict(e).items() if k != "sha256"}
                    for e in data.keys
                ]
                print(msgspec.json.encode(rows).decode())
                return 0
            print(f"{'NAME':<20} {'ADMIN':<5} {'CLASS':<6} {'MODELS':<24} {'LIMITS':<40} CREATED")
            for e in data.keys:
                print(
                    f"{e.name:<20} {'yes' if e.admin else 'no':<5} {e.priority:<6} "
                    f"{','.join(e.models):<24} {_limits(e):<40} {e.created}"
                )
            return 0
        if args.command == "add":
            data = _read(path, missing_ok=True)
            same = [e for e in data.keys if e.name == args.name]
            if same and not args.replace:
                raise KeyFileError(f"{path}: a key named {args.name!r} exists (rotate it?)")
            if args.key_stdin:
                key = sys.stdin.readline().strip()
                problem = token_problem(key)
                if problem:
                    raise KeyFileError(f"the key from stdin {problem}")
            else:
                key = new_key()
            entry = KeyEntry(
                name=args.name,
                sha256=digest(key).hex(),
                models=[p.strip() for p in args.models.split(",") if p.strip()],
                priority=args.priority,
                rate=args.rate,
                concurrency=args.concurrency,
                gpu_day=args.gpu_day,
                gpu_month=args.gpu_month,
                admin=args.admin,
                created=now_text(),
            )
            if same and msgspec.structs.replace(same[0], created=entry.created) == entry:
                print(f"key {args.name!r} is already in {path}", file=sys.stderr)
                return 0
            kept = [e for e in data.keys if e.name != args.name]
            _save_checked(path, KeyFileData(keys=[*kept, entry]))
            if not args.key_stdin:
                print(key)
            print(f"key {args.name!r} added to {path}", file=sys.stderr)
            return 0
        if args.command == "revoke":
            data = _read(path, missing_ok=False)
            _find(data, args.name, path)
            kept = [e for e in data.keys if e.name != args.name]
            _save_checked(path, KeyFileData(keys=kept))
            print(f"key {args.name!r} revoked in {path}", file=sys.stderr)
            return 0
        if args.command == "rotate":
            data = _read(path, missing_ok=False)
            old = _find(data, args.name, path)
            key = new_key()
            fresh = [_replace(e, sha256=digest(key).hex()) if e is old else e for e in data.keys]
            _save_checked(path, KeyFileData(keys=fresh))
            print(key)
            print(f"key {args.name!r} rotated in {path} (the old key is refused)", file=sys.stderr)
            return 0
    except KeyFileError as exc:
        print(f"proxy keys: {exc}", file=sys.stderr)
        return 1
    return 2


def _replace(entry: KeyEntry, **changes: object) -> KeyEntry:
    return msgspec.structs.replace(entry, **changes)


def _save_checked(path: Path, data: KeyFileData) -> None:
    """Check the new content as the proxy will read it, then write it."""
    parse(msgspec.json.encode(data), path)
    save(path, data)
