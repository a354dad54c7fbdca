"""What the readiness probe costs during a long load, on the real Docker engine.

    python -m bench.experiments.probe_cpu [--load-seconds 60] [--output probe_cpu]

Starts one container of ``homelab-ai/fakevllm:test`` that loads for ``--load-seconds``
(no port bound meanwhile: Docker's port proxy accepts and drops every look), runs
`HttpReadinessProbe.wait_ready` on it through `DockerRuntime`, and reports the HTTP
looks and runtime inspects it made, the CPU seconds of this process (the probe, as the
manager would spend them), of dockerd and of the docker-proxy processes, and how long
after the server's "Uvicorn running" line the probe returned. Writes
bench/results/<output>.json. Port 18690.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from bench import procstat
from bench.common import command_line, fmt, wall_ns, write_json
from manager.docker_runtime import DockerRuntime
from manager.health import HttpReadinessProbe, Verdict
from manager.runtime import Instance, Spec
from manager.settings import ManagerSettings
from manager.spec import TextModel

IMAGE = "homelab-ai/fakevllm:test"
PORT = 18690
CONTAINER = "bench-probe-cpu"


class CountingProbe(HttpReadinessProbe):
    looks = 0
    checks = 0

    async def knock(self, base_url: str, within: float) -> str | None:
        self.looks += 1
        return await super().knock(base_url, within)

    async def check(self, *args: Any, **kwargs: Any) -> Verdict:
        self.checks += 1
        return await super().check(*args, **kwargs)


class CountingRuntime(DockerRuntime):
    inspects = 0

    async def inspect(self, name: str, spec: Spec) -> Instance | None:
        self.inspects += 1
        return await super().inspect(name, spec)


def _pids(name: str) -> list[int]:
    """Pids whose /proc/PID/comm is `name`."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def measure(load_seconds: float, image: str = IMAGE) -> dict[str, Any]:
    settings = ManagerSettings(
        manager_token="probe-cpu-Zq8vLm3Kp9Xw2Rt7", hf_cache="/tmp", model_host="127.0.0.1"
    )
    runtime = CountingRuntime(settings)
    spec = TextModel(
        type="text",
        container=CONTAINER,
        port=PORT,
        image=image,
        model="fake/probe-cpu",
        gpu=False,
        start_timeout=load_seconds + 60,
        env={"FAKEVLLM_LOAD_SECONDS": str(load_seconds)},
    )
    probe = CountingProbe()
    try:
        await runtime.start("probe-cpu", spec)
        dockerd = _pids("dockerd")
        proxies = _pids("docker-proxy")
        cpu0 = time.process_time()
        engine0 = procstat.cpu_seconds(dockerd + proxies)
        wall0 = time.monotonic()
        await probe.wait_ready("probe-cpu", spec, runtime)
        returned_ns = time.time_ns()
        wall = time.monotonic() - wall0
        cpu = time.process_time() - cpu0
        engine = procstat.cpu_seconds(dockerd + proxies)
        ready_ns = None
        client = await runtime._docker()
        container = client.containers.get(CONTAINER)
        for line in container.logs(timestamps=True).decode(errors="replace").splitlines():
            stamp, _, text = line.partition(" ")
            if "Uvicorn running on" in text:
                ready_ns = wall_ns(stamp)
    finally:
        await runtime.stop("probe-cpu", spec, 5)
        await probe.aclose()
        await runtime.aclose()
    return {
        "load_seconds": load_seconds,
        "image": image,
        "wall_s": wall,
        "looks": probe.looks,
        "full_checks": probe.checks,
        "inspects": runtime.inspects,
        "probe_cpu_s": cpu,
        "engine_cpu_s": engine - engine0,
        "probe_cpu_share": cpu / wall,
        "engine_cpu_share": (engine - engine0) / wall,
        "noticed_after_ms": (returned_ns - ready_ns) / 1e6 if ready_ns else None,
        "loadavg": procstat.loadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load-seconds", type=float, default=60.0)
    p.add_argument("--output", default="probe_cpu")
    p.add_argument("--image", default=IMAGE, help="the model image (it must exist)")
    args = p.parse_args(argv)
    result = asyncio.run(measure(args.load_seconds, args.image))
    result["command"] = command_line("bench.experiments.probe_cpu", argv)
    path = write_json(args.output, result)
    print(
        f"{result['looks']} looks and {result['inspects']} inspects in {fmt(result['wall_s'], 1)} s; "
        f"probe CPU {fmt(result['probe_cpu_s'], 2)} s ({fmt(100 * result['probe_cpu_share'], 1)}% of a core), "
        f"dockerd+docker-proxy {fmt(result['engine_cpu_s'], 2)} s "
        f"({fmt(100 * result['engine_cpu_share'], 1)}%); noticed "
        f"{fmt(result['noticed_after_ms'], 1)} ms after the server listened"
    )
    print(f"raw numbers: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
