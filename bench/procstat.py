"""What the benchmarks read from /proc: CPU time, resident size, machine description.

Linux only. Every function reads a snapshot and never blocks for long; a process
that vanished between listing and reading is skipped, never an error.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process visible now."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def tree(pid: int, exclude: set[int] | None = None) -> list[int]:
    """`pid` and its descendants, leaving out `exclude` and their descendants."""
    kids = children_map()
    exclude = exclude or set()
    seen: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        if p in exclude or p in seen:
            continue
        seen.append(p)
        stack.extend(kids.get(p, []))
    return seen


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds so far of the given processes (not their dead children)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    """Sum of VmRSS of the given processes, in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def system_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (iowait counted as idle)."""
    with open("/proc/stat", encoding="ascii") as fh:
        parts = fh.readline().split()
    values = [int(v) for v in parts[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already inside user time: count the first 8 fields only
    return (sum(values[:8]) - idle) / CLK_TCK


def loadavg() -> list[float]:
    with open("/proc/loadavg", encoding="ascii") as fh:
        return [float(x) for x in fh.read().split()[:3]]


def _run(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return ""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (
        (done.stdout or done.stderr).strip().splitlines()[0]
        if (done.stdout or done.stderr).strip()
        else ""
    )


def machine() -> dict:
    """A description of this machine and software, recorded beside every result."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            mem_kib = int(fh.readline().split()[1])
    except OSError:
        pass
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {
        "taken_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "wrk": _run(["wrk", "--version"]).split(" [")[0],
        "docker_server": _run(["docker", "version", "--format", "{{.Server.Version}}"]),
        "git_commit": _run(["git", "-C", repo, "rev-parse", "--short", "HEAD"]),
        "loadavg_at_start": loadavg(),
    }


def _os_release() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


@dataclass
class CpuWindow:
    """CPU seconds used between `start()` and `stop()`, per named process group and overall."""

    groups: dict[str, list[int]]
    _start: dict[str, float] = field(default_factory=dict)
    _sys0: float = 0.0
    _t0: float = 0.0
    used: dict[str, float] = field(default_factory=dict)
    system_busy: float = 0.0
    wall: float = 0.0

    def start(self) -> CpuWindow:
        self._start = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        self._sys0 = system_busy_seconds()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> CpuWindow:
        self.wall = time.monotonic() - self._t0
        self.system_busy = system_busy_seconds() - self._sys0
        self.used = {
            name: cpu_seconds(pids) - self._start[name] for name, pids in self.groups.items()
        }
        return self


class RssSampler:
    """Samples the summed RSS of named process groups every `interval` seconds in a thread.

    `groups` maps a name to a callable returning the pids to sum (re-evaluated each
    sample, so worker processes that appear later are counted).
    """

    def __init__(self, groups: dict[str, object], interval: float = 0.1) -> None:
        self.groups = groups
        self.interval = interval
        self.peak: dict[str, int] = {name: 0 for name in groups}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def snapshot(self) -> dict[str, int]:
        return {name: rss_kib(get()) for name, get in self.groups.items()}  # type: ignore[operator]

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, value in self.snapshot().items():
                self.peak[name] = max(self.peak[name], value)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
