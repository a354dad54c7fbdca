"""Shared helpers of the benchmark scripts: paths, statistics, tables, result files."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("HOMELAB_BENCH_RESULTS", REPO / "bench" / "results"))
DOC = REPO / "docs" / "benchmarks.md"


def percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile (pct in 0..100) of a non-empty list; NaN if empty."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (also readable on a terminal)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_json(name: str, data: object) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    text = json.dumps(_clean(data), indent=2, allow_nan=False, default=_jsonable)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_csv(name: str, rows: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    fields: list[str] = []
    for row in rows:
        for key in row:
            if key not in fields:
                fields.append(key)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_json(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _clean(value: object) -> object:
    """NaN and infinities become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def wall_ns(value: object) -> int | None:
    """A wall-clock time as integer nanoseconds since the epoch, or None if unreadable.

    Accepts epoch seconds (int/float, or a numeric string) and RFC 3339 / ISO 8601 text
    with up to nanosecond fractions (Docker's ``StartedAt`` and ``docker logs -t``).
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return int(value * 1e9) if value < 1e12 else int(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return wall_ns(float(text))
    except ValueError:
        pass
    m = _RFC3339.match(text)
    if not m:
        return None
    base, frac, zone = m.groups()
    zone = zone or "Z"
    if zone == "Z":
        zone = "+00:00"
    elif ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    seconds = _dt.datetime.fromisoformat(base + zone).timestamp()
    nanos = int((frac or "0")[:9].ljust(9, "0"))
    return int(seconds) * 1_000_000_000 + nanos


def command_line(module: str, argv: list[str] | None) -> str:
    """How this result was produced, for the report: 'python -m bench.x --flag ...'."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m " + module, *args])


def run_bench(
    module: str,
    argv: list[str] | None,
    parse_args: Callable[[list[str] | None], Any],
    measure: Callable[[Any], dict],
    render: Callable[[dict], str],
) -> int:
    """A benchmark's `main`: parse, measure, write `<--output>.json`, print its table."""
    args = parse_args(argv)
    result = measure(args)
    result["command"] = command_line(module, argv)
    path = write_json(args.output, result)
    print(render(result))
    print(f"raw numbers: {path}")
    return 0
