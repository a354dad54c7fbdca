"""Learned footprints: the GPU memory each model was seen to take, kept across restarts.

Where NVML answers, the scheduler reads the GPU's used memory just before a model's
start and again once it is ready; when nothing else started or stopped in between, the
difference is the model's footprint. It is shown in ``/v1/models``
(``observed_gpu_memory_mib``), logged as a warning when it is over the declaration, and
kept here, the last `HISTORY` readings per model, in a small JSON file beside the lease
file (``footprints.json``)::

    {"models": {"sdxl": {"declared_mib": 8000, "readings": [[<Unix s>, 7612], ...]}}}

An image model that declares no ``gpu_memory_mib`` is planned with the most it was seen
to take once there is a reading (``manager.budget.with_image_estimates``; before that,
its options' estimate), from the next start of the manager and, in a running one, from
the reading on.

``python -m manager footprints`` prints each model's declaration beside what was seen and
exits 1 when a model was seen to take more than it declares, so a catalogue's
declarations can be checked against history.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from manager.spec import Catalogue

log = logging.getLogger(__name__)

FOOTPRINT_FILE = "footprints.json"
"""The file's name, in the manager's `log_dir` (`ManagerSettings.footprint_path`)."""
HISTORY = 20
"""Readings kept per model."""

GpuUsed = Callable[[], Awaitable[int | None]]
"""Reads the GPU's used memory in MiB (None: could not read)."""


class FootprintStore:
    """The footprints file. Small blocking reads and writes, on purpose on the event loop
    (one write per model start)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            models = json.loads(self.path.read_text(encoding="utf-8"))["models"]
            if not isinstance(models, dict):
                raise ValueError("models is not an object")
            return models
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable footprints file %s: %s", self.path, exc)
            return {}

    def record(self, model: str, observed_mib: int, declared_mib: int | None, at: float) -> None:
        """Add a reading for `model` and write the file (errors are logged, not raised)."""
        entry = self._data.setdefault(model, {"readings": []})
        entry["declared_mib"] = declared_mib
        entry["readings"] = [*entry.get("readings", []), [round(at, 3), observed_mib]][-HISTORY:]
        try:
            write_atomic(self.path, {"models": self._data})
        except OSError as exc:
            log.warning("could not write the footprints file %s: %s", self.path, exc)

    def readings(self, model: str) -> list[int]:
        """`model`'s readings in MiB, oldest first."""
        entry = self._data.get(model, {})
        return [int(mib) for _, mib in entry.get("readings", [])]

    def all_readings(self) -> dict[str, list[int]]:
        """Every model's readings in MiB, oldest first."""
        return {name: values for name in self._data if (values := self.readings(name))}

    def observed(self) -> dict[str, int]:
        """Each model's last reading."""
        return {name: values[-1] for name in self._data if (values := self.readings(name))}


def write_atomic(path: Path, data: object) -> None:
    """Write `data` as JSON to `path` through a temporary file and a rename (a reader
    never sees half a file). Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def report(catalogue: Catalogue, store: FootprintStore) -> tuple[list[str], bool]:
    """Lines comparing each model's declaration with its readings, and whether any model
    was seen to take more than it declares."""
    lines = [f"{'model':<28} {'declared MiB':>12} {'seen max':>9} {'last':>6} {'n':>3}  verdict"]
    over = False
    for name, spec in catalogue.models.items():
        values = store.readings(name)
        declared = spec.gpu_memory_mib
        if not values:
            verdict, top, last = "never measured", "-", "-"
        else:
            top, last = str(max(values)), str(values[-1])
            if declared is None:
                verdict = f"undeclared: declare about {max(values)}"
            elif max(values) > declared:
                verdict, over = f"OVER by {max(values) - declared} MiB", True
            else:
                verdict = "ok"
        shown = "-" if declared is None else str(declared)
        lines.append(f"{name:<28} {shown:>12} {top:>9} {last:>6} {len(values):>3}  {verdict}")
    return lines, over
