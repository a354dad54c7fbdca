"""The process runtime's registry of model servers, and reading ``/proc/PID/stat``.

The manager's process runtime (`manager.process_runtime`) launches each model server
in its own session and records it in ``<log_dir>/registry.json``: model name ->
`ProcessRecord` (with the server's upstream key: the file is mode 600). A restarted
manager adopts what it finds there; a supervisor of the
manager (``deploy/demo.py``) reads it to stop servers a dead manager left behind. A
pid is only ever signalled when its start time (field 22 of ``/proc/PID/stat``) still
matches the record, so a reused pid is never mistaken for a server. POSIX only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wire.private import write_private

log = logging.getLogger("wire.procs")

REGISTRY_FILE = "registry.json"


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    spec_hash: str
    started: str | None
    """The process's start time as the kernel reports it (/proc/<pid>/stat field 22)."""
    argv: list[str]
    log: str
    api_key: str | None = field(default=None, repr=False)
    """The server's upstream key (None in registries written before keys existed)."""


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the command name, which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid`, or None (no such process, or no /proc)."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def is_zombie(pid: int) -> bool:
    """Whether `pid` has exited and waits to be reaped (state Z or X)."""
    fields = _stat_fields(pid)
    return fields is not None and bool(fields) and fields[0] in ("Z", "X")


def is_alive(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not is_zombie(pid)


def is_same_process(pid: int, started: str | None) -> bool:
    """`pid` is alive and is the process that started at `started` (not a reused pid).
    An unknown start time (recorded or now) does not count against it."""
    if not is_alive(pid):
        return False
    now = start_time(pid)
    return started is None or now is None or now == started


def read_registry(directory: Path) -> dict[str, ProcessRecord]:
    """The records in `directory`/registry.json; {} when absent or unreadable
    (malformed entries are skipped with a warning)."""
    path = Path(directory) / REGISTRY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable process registry %s: %s", path, exc)
        return {}
    records: dict[str, ProcessRecord] = {}
    for name, entry in data.items() if isinstance(data, dict) else ():
        try:
            records[name] = ProcessRecord(**entry)
        except TypeError:
            log.warning("ignoring malformed registry entry %r", name)
    return records


def write_registry(directory: Path, records: dict[str, ProcessRecord]) -> None:
    """Replace `directory`/registry.json atomically. Raises OSError."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = json.dumps({k: asdict(v) for k, v in records.items()}, indent=2).encode()
    # The registry holds upstream keys: only its owner may read it (mode 600).
    # One writer (the manager): a fixed temporary name, which the fault tests hold on a FIFO.
    write_private(directory / REGISTRY_FILE, blob, tmp_name="registry.tmp")
