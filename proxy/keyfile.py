"""The key file: named keys, each with its settings, stored hashed (docs/keys.md).

``HOMELAB_KEY_FILE`` (default ``<state_dir>/keys.json``) is JSON::

    {"version": 1, "keys": [{"name": "alice", "sha256": "<64 hex>", "models": ["*"],
      "priority": "normal", "rate": 60, "concurrency": 2, "gpu_day": 3600,
      "gpu_month": null, "admin": false, "created": "2026-12-07T21:00:00Z"}]}

Only the SHA-256 digest of each key is kept: the key itself is printed once by
``python -m proxy keys add|rotate`` (`proxy.keys_cli`) and never stored. The file is
written atomically (a temporary file renamed over it), mode 0600, in a folder of mode
0700. Loading is strict (unknown fields, duplicate names or digests, bad patterns and
non-positive limits are refused) and every problem is a `KeyFileError` naming the file,
the key and the reason: the proxy does not start with a bad file, and a bad rewrite
while it runs is logged and the keys in force kept (`KeyFileWatcher`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import msgspec

from proxy.keys import ALL_MODELS, KeyRing, Principal, PriorityClass, simple_entries
from wire.private import private_dir, write_private

log = logging.getLogger("proxy.keys")

VERSION = 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A key's name: it is a Prometheus label value, an owner in the job store and shown in
the UI, so letters, digits and ``_.-`` only, at most 64."""
KEY_PREFIX = "hl-"
POLL = 1.0
"""Seconds between two looks at the key file's modification time."""


class KeyEntry(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """One named key in the file (never the key itself)."""

    name: str
    sha256: str
    models: list[str] = msgspec.field(default_factory=lambda: list(ALL_MODELS))
    priority: PriorityClass = "normal"
    rate: int | None = None
    concurrency: int | None = None
    gpu_day: float | None = None
    gpu_month: float | None = None
    admin: bool = False
    created: str = ""

    def principal(self) -> Principal:
        return Principal(
            name=self.name,
            admin=self.admin,
            models=tuple(self.models),
            priority=self.priority,
            rate=self.rate,
            concurrency=self.concurrency,
            gpu_day=self.gpu_day,
            gpu_month=self.gpu_month,
        )


class KeyFileData(msgspec.Struct, forbid_unknown_fields=True):
    version: int = VERSION
    keys: list[KeyEntry] = msgspec.field(default_factory=list)


class KeyFileError(ValueError):
    """The key file cannot be used: the message names the file, the key and the reason."""


def new_key() -> str:
    """A fresh API key (192 bits), passing `wire.tokens`' rules."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _problem(entry: KeyEntry) -> str | None:
    if not NAME.match(entry.name):
        return "the name must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit)"
    if not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
        return "'sha256' must be 64 lower-case hex digits (the key's SHA-256)"
    if not entry.models:
        return "'models' is empty: give at least one pattern ('*' for every model)"
    if any(not p or len(p) > 200 for p in entry.models):
        return "a pattern in 'models' is empty or longer than 200 characters"
    for field in ("rate", "concurrency", "gpu_day", "gpu_month"):
        value = getattr(entry, field)
        if value is not None and value <= 0:
            return f"'{field}' must be positive (or null: no limit)"
    return None


def parse(raw: bytes, path: Path | str = "<key file>") -> KeyFileData:
    """The key file's content, checked. Raises KeyFileError."""
    try:
        data = msgspec.json.decode(raw, type=KeyFileData)
    except msgspec.ValidationError as exc:
        raise KeyFileError(f"{path}: {_where(exc)}") from exc
    except msgspec.DecodeError as exc:
        raise KeyFileError(f"{path}: not JSON: {exc}") from exc
    if data.version != VERSION:
        raise KeyFileError(f"{path}: version {data.version} is not {VERSION}")
    names: set[str] = set()
    digests: set[str] = set()
    for number, entry in enumerate(data.keys, 1):
        label = f"key {number} ({entry.name!r})"
        problem = _problem(entry)
        if problem:
            raise KeyFileError(f"{path}: {label}: {problem}")
        if entry.name in names:
            raise KeyFileError(f"{path}: {label}: the name is used twice")
        if entry.sha256 in digests:
            raise KeyFileError(f"{path}: {label}: the same key as another entry")
        names.add(entry.name)
        digests.add(entry.sha256)
    return data


def _where(exc: msgspec.ValidationError) -> str:
    # msgspec says "... - at `$.keys[1].rate`": name the key by its number, from 1.
    text = str(exc)
    match = re.search(r"\$\.keys\[(\d+)\]", text)
    if match:
        text = text.replace(match.group(0), f"key {int(match.group(1)) + 1}")
    return text


def load(path: Path) -> KeyFileData:
    """Read and check the key file. Raises KeyFileError (OSError included)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    return parse(raw, path)


def entries(data: KeyFileData) -> dict[bytes, Principal]:
    """Ring entries (digest to principal) of the file's keys."""
    return {bytes.fromhex(e.sha256): e.principal() for e in data.keys}


def save(path: Path, data: KeyFileData) -> None:
    """Write the key file atomically, mode 0600, its folder made (or tightened to) 0700."""
    private_dir(path.parent)
    write_private(path, msgspec.json.format(msgspec.json.encode(data), indent=2) + b"\n")


def build_ring(simple: list[str], path: Path | None) -> KeyRing:
    """The ring at start-up: the simple keys and the key file's (the file's entry wins for a
    key in both). Open only when neither gives any: no simple keys and no file. Raises
    KeyFileError for a bad file."""
    if path is not None and path.exists():
        return KeyRing(merge(simple, entries(load(path))), open=False)
    return KeyRing.simple(simple)


def merge(simple: list[str], named: dict[bytes, Principal]) -> dict[bytes, Principal]:
    """The simple keys and the named ones; a key in both is the named one."""
    return {**simple_entries(simple), **named}


class KeyFileWatcher:
    """Re-reads the key file when its modification time (or size) changes, at most once
    every `POLL` seconds, and swaps the new keys into `ring` (with the simple keys).

    Runs as a background task (`run`); requests never touch the file. A file that cannot
    be read or is bad keeps the keys in force, logged once per change; a file that was
    removed is read as no named keys (only the simple ones stay)."""

    def __init__(
        self,
        path: Path,
        ring: KeyRing,
        simple: list[str],
        *,
        on_reload: Callable[[KeyRing], None] | None = None,
    ) -> None:
        self.path, self.ring, self.simple = path, ring, simple
        self.on_reload = on_reload
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def check(self) -> bool:
        """Look once: reload if the file changed. True when the ring was replaced."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        if stamp is None:
            named: dict[bytes, Principal] = {}
        else:
            try:
                named = entries(load(self.path))
            except KeyFileError as exc:
                log.error("the key file changed but cannot be used (keys in force kept): %s", exc)
                return False
        self.ring.replace(merge(self.simple, named))
        log.info("key file %s re-read: %d keys", self.path, len(named))
        if self.on_reload is not None:
            self.on_reload(self.ring)
        return True

    async def run(self) -> None:
        """Look every `POLL` seconds until cancelled (a stat; the small file is read only
        when it changed)."""
        while True:
            await asyncio.sleep(POLL)
            self.check()
