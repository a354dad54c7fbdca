"""Run `wrk` (a C load generator) with bench/wrk_post.lua and parse its summary.

Why wrk: on a 2-core machine a Python load client would spend more CPU than the
proxy it measures. wrk with one thread and N keep-alive connections is a closed
loop: each connection sends its next request when the previous answer arrives.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from pathlib import Path

LUA = Path(__file__).resolve().parent / "wrk_post.lua"


class WrkError(Exception):
    """wrk is missing, failed, or printed no summary."""


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    body_file: Path,
    connections: int,
    duration: float,
    *,
    header_file: Path | None = None,
    threads: int = 1,
    timeout: float = 30.0,
    cpus: str | None = None,
) -> dict:
    """Run wrk once; blocks for about `duration` seconds.

    Returns wrk's summary (latencies in microseconds) plus ``rps`` and ``client_cpu_s``
    (wrk's own user+system CPU). Raises WrkError.
    """
    if not available():
        raise WrkError("wrk is not installed (apt-get install wrk)")
    cmd = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-s",
        str(LUA),
        url,
        "--",
        str(body_file),
        str(header_file or ""),
    ]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + timeout + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish: {exc}") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise WrkError(
            f"wrk failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )
    result = json.loads(line[len("WRK_JSON ") :])
    result["rps"] = (
        result["requests"] / (result["duration_us"] / 1e6) if result["duration_us"] else 0.0
    )
    result["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["connections"] = connections
    result["non_2xx"] = result["errors"]["status"]
    result["socket_errors"] = sum(v for k, v in result["errors"].items() if k != "status")
    return result
