"""Memory: resident size (RSS) of the proxy and the manager, idle and under load.

    python -m bench.memory

One text model (the stand-in upstream, launched by the manager's process runtime)
made resident. Phases, each sampling RSS every 0.1 s (the proxy with any worker
processes; the manager without the model server it launched):

1. idle after start-up (and one request, so lazy imports have happened);
2. ``--duration`` seconds of wrk at 64 connections, non-streaming;
3. ``--streams`` concurrent streaming requests, ``--rounds`` times;
4. idle again after ``--settle`` seconds (does memory come back?).

Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bench import procstat, stack, wrk
from bench.common import command_line, fmt, table, write_json
from bench.streaming import _runner, run_streams

MODEL = "bench-mem"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--idle", type=float, default=5.0, help="seconds of the first idle phase")
    p.add_argument("--output", default="memory")
    stack.add_env_option(p)
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> dict:
    ports = stack.free_ports(3)  # upstream, manager, proxy
    result: dict = {
        "benchmark": "memory",
        "machine": procstat.machine(),
        "settings": vars(args)
        | {"unit": "KiB (VmRSS); cpu_share: CPU seconds per wall second (1.0 = one core)"},
        "phases": [],
    }
    with stack.Stack("memory", extra_env=stack.parse_env(args.env)) as st:
        setup = stack.one_model(
            st, ports, MODEL, ["--stream-chunks", "50", "--stream-gap-ms", "10"], False
        )
        assert setup.proxy_pid is not None and setup.manager_pid is not None
        groups = {
            "proxy": lambda: procstat.tree(setup.proxy_pid),
            "manager": lambda: procstat.tree(setup.manager_pid, exclude={setup.upstream_pid}),
            "upstream": lambda: [setup.upstream_pid],
        }
        body_file = st.workdir / "body.json"
        body_file.write_text(
            json.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
            )
        )
        header_file = st.workdir / "headers.txt"
        header_file.write_text("".join(f"{k}: {v}\n" for k, v in setup.headers.items()))
        url = f"http://{setup.proxied[0]}:{setup.proxied[1]}/v1/chat/completions"  # type: ignore[index]
        wrk.run(url, body_file, 1, 1, header_file=header_file)

        def phase(name: str, work) -> None:
            sampler = procstat.RssSampler(groups)
            start = sampler.snapshot()
            cpu = procstat.CpuWindow({name: get() for name, get in groups.items()}).start()
            t0 = time.monotonic()
            with sampler:
                detail = work()
            cpu.stop()
            end = sampler.snapshot()
            result["phases"].append(
                {
                    "phase": name,
                    "start_kib": start,
                    "peak_kib": sampler.peak,
                    "end_kib": end,
                    "samples": sampler.samples,
                    "seconds": time.monotonic() - t0,
                    "cpu_share": {name: used / cpu.wall for name, used in cpu.used.items()},
                    "detail": detail,
                }
            )
            print(f"  {name}: peak {sampler.peak}", file=sys.stderr, flush=True)

        phase("idle", lambda: time.sleep(args.idle))
        phase(
            f"wrk {args.connections} connections, {args.duration:.0f}s",
            lambda: {
                k: v
                for k, v in wrk.run(
                    url, body_file, args.connections, args.duration, header_file=header_file
                ).items()
                if k in ("requests", "rps", "non_2xx", "socket_errors")
            },
        )

        def streams() -> dict:
            runner = _runner()
            out = []
            for _ in range(args.rounds):
                out += runner(
                    run_streams(setup.proxied, setup.headers, args.streams, args.streams, 50, MODEL)
                )
            return {"streams": len(out), "incomplete": sum(1 for s in out if not s["complete"])}

        phase(f"{args.streams} concurrent streams x {args.rounds}", streams)
        phase(f"idle {args.settle:.0f}s later", lambda: time.sleep(args.settle))
    return result


def render(result: dict) -> str:
    rows = []
    for p in result["phases"]:
        rows.append(
            [
                p["phase"],
                fmt(p["peak_kib"]["proxy"] / 1024, 1),
                fmt(p["peak_kib"]["manager"] / 1024, 1),
                fmt(p["end_kib"]["proxy"] / 1024, 1),
                fmt(p["end_kib"]["manager"] / 1024, 1),
                f"{p['cpu_share']['proxy'] * 100:.1f}%",
                f"{p['cpu_share']['manager'] * 100:.1f}%",
            ]
        )
    return table(
        [
            "phase",
            "proxy peak MiB",
            "manager peak MiB",
            "proxy at end MiB",
            "manager at end MiB",
            "proxy CPU (1 core = 100%)",
            "manager CPU",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    result["command"] = command_line("bench.memory", argv)
    path = write_json(args.output, result)
    print(render(result))
    print(f"raw numbers: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
