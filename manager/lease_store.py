"""`LeaseStore`: the manager's leases on disk, so a restarted manager knows what is in flight.

A lease is the manager's promise that its model stays resident; a manager restarted
while proxies still stream under its leases must keep that promise, or its first
swap cuts those streams. So the scheduler writes its lease table here after every
change (coalesced: one write per event-loop turn) and reads it back at start-up,
before it serves anything. Why a file and not "proxies re-declare their leases when
they reconnect": the file is read before the first request is taken, so there is no
window in which the new manager decides a swap without knowing the leases; it needs
no new proxy contract; and it holds for every proxy, including one that has not
noticed the restart yet (docs/architecture.md, "What survives what").

Format: `{"leases": [{"lease_id", "model", "type", "base_url", "ttl", "max_uses",
"max_concurrent", "expires": <Unix seconds>}]}` (`max_uses` 0: unbounded; a file
written before `max_concurrent` existed loads with 1); written to a temporary file and renamed, so a reader
never sees half a file. An unreadable or malformed file is logged and ignored (the
manager then starts with no leases, as before). Expiry is stored in wall-clock time
and converted back to the scheduler's monotonic clock on load.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LEASE_FILE = "leases.json"


@dataclass(frozen=True)
class StoredLease:
    lease_id: str
    model: str
    type: str
    base_url: str
    ttl: float
    max_uses: int
    expires: float
    """Unix seconds."""
    max_concurrent: int = 1
    """Absent in files written before it existed: 1."""
    key_name: str = ""
    """The name of the API key it was granted for (fair share); absent: unnamed."""
    key_class: str = "normal"


class LeaseStore:
    """Reads and writes one lease file. Blocking file I/O on small files (microseconds);
    called from the event loop on purpose, so the file is written before the grant's
    answer can reach a proxy."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[StoredLease]:
        """Every lease in the file ([] when there is none or it is unreadable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = data["leases"]
            return [StoredLease(**entry) for entry in entries]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable lease file %s: %s", self.path, exc)
            return []

    def save(self, leases: list[StoredLease]) -> None:
        """Replace the file's content with `leases`. Logs (does not raise) on failure: a
        manager that cannot write its leases still serves, it just forgets them on restart."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(
                json.dumps({"leases": [lease.__dict__ for lease in leases]}), encoding="utf-8"
            )
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot write the lease file %s: %s", self.path, exc)
