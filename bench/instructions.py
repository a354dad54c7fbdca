"""The proxy's own instructions per forwarded request, counted by valgrind (issue 23).

    python -m bench.instructions [--requests 2000] [--rounds 3] [--warmup 200]
                                 [--idle 5] [--label main] [--keep-dumps DIR]

CPU milliseconds per request move with whatever else the machine runs; the number
of instructions the proxy executes for a request does not. So the proxy of
`bench.stack.one_model` (manager, stand-in upstream, proxy; the manager's process
runtime) runs under `valgrind --tool=callgrind`, its instrumentation off while it
starts (so start-up stays quick and is never counted), then switched on with
`callgrind_control`. Per round:

1. counters zeroed, the proxy left idle `--idle` seconds, counters dumped: the
   instructions per second that timers and the event loop cost with no request;
2. counters zeroed, `--requests` requests of `bench.latency`'s chat body sent one
   after another on one keep-alive connection (every answer must be 200), counters
   dumped.

Instructions per request = (load instructions - idle rate x load seconds) / requests;
the figure of a run is the median over its rounds. `--warmup` requests go first,
unrecorded (imports on first use, the first lease). The client and the other
processes are not counted. Needs valgrind (`apt-get install valgrind`). Writes
bench/results/instructions-<label>.json; with `--keep-dumps`, the callgrind files
stay there for `callgrind_annotate`.

No figure here is a wall-clock one, and nothing asserts on one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import httpraw, latency, procstat, stack
from bench.common import command_line, median, write_json

_TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.M)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per counted round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=200, help="uncounted requests first")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of the idle baseline")
    p.add_argument("--label", default="current", help="names bench/results/instructions-LABEL.json")
    p.add_argument("--keep-dumps", default=None, metavar="DIR", help="keep callgrind's files here")
    p.add_argument(
        "--start-timeout", type=float, default=600.0, help="seconds for the proxy to start"
    )
    p.add_argument("--proxy-module", default="proxy")
    stack.add_env_option(p)
    return p.parse_args(argv)


class Callgrind:
    """The counters of one process running under callgrind, read through `callgrind_control`."""

    def __init__(self, pid: int, out_prefix: Path) -> None:
        self.pid, self.out_prefix, self.dumps = pid, out_prefix, 0

    def control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def dump(self) -> int:
        """Dump the counters since the last zero; the instructions counted."""
        self.control("-d")
        self.dumps += 1
        path = Path(f"{self.out_prefix}.{self.dumps}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if path.exists():
                found = _TOTALS.search(path.read_bytes())
                if found:
                    return int(found.group(1))
            time.sleep(0.2)
        raise stack.StackError(f"callgrind wrote no {path}")


async def _requests(target: tuple[str, int], headers: dict[str, str], n: int) -> None:
    body = json.dumps(latency.BODY).encode()
    conn = httpraw.Connection(*target)
    try:
        for i in range(n):
            resp = await conn.request("POST", latency.PATH, body, headers, 120)
            if resp.status != 200:
                raise SystemExit(f"request {i} answered {resp.status}: {resp.body[:300]!r}")
    finally:
        await conn.close()


def measure(args: argparse.Namespace) -> dict:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind and callgrind_control (apt-get install valgrind)")
    ports = stack.free_ports(3)
    rounds: list[dict] = []
    with stack.Stack("instructions") as st:
        st.extra_env.update(stack.parse_env(args.env))
        dumps = Path(args.keep_dumps) if args.keep_dumps else st.workdir
        dumps.mkdir(parents=True, exist_ok=True)
        out_prefix = dumps / "callgrind.proxy"
        wrapper = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out_prefix}",
        ]
        one = stack.one_model(
            st,
            ports,
            latency.MODEL,
            [],
            False,
            proxy_module=args.proxy_module,
            proxy_wrapper=wrapper,
            proxy_timeout=args.start_timeout,
        )
        assert one.proxied is not None and one.proxy_pid is not None
        cg = Callgrind(one.proxy_pid, out_prefix)
        cg.control("-i", "on")
        asyncio.run(_requests(one.proxied, one.headers, args.warmup))
        for r in range(args.rounds):
            cg.control("-z")
            t0 = time.monotonic()
            time.sleep(args.idle)
            idle_instr = cg.dump()
            idle_rate = idle_instr / (time.monotonic() - t0)
            cg.control("-z")
            t0 = time.monotonic()
            asyncio.run(_requests(one.proxied, one.headers, args.requests))
            load_s = time.monotonic() - t0
            load_instr = cg.dump()
            per = (load_instr - idle_rate * load_s) / args.requests
            rounds.append(
                {
                    "idle_instructions_per_s": idle_rate,
                    "load_instructions": load_instr,
                    "load_s_under_valgrind": load_s,
                    "instructions_per_request": per,
                }
            )
            print(
                f"round {r + 1}/{args.rounds}: {per / 1000:.1f} k instructions/request "
                f"(idle {idle_rate / 1e6:.2f} M/s)",
                file=sys.stderr,
                flush=True,
            )
    return {
        "benchmark": "instructions",
        "label": args.label,
        "machine": procstat.machine(),
        "command": command_line("bench.instructions", sys.argv[1:]),
        "settings": {
            "requests": args.requests,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "idle_s": args.idle,
        },
        "rounds": rounds,
        "instructions_per_request": median([r["instructions_per_request"] for r in rounds]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    path = write_json(f"instructions-{args.label}", result)
    print(
        f"{args.label}: {result['instructions_per_request'] / 1000:.1f} k instructions "
        f"per request (median of {args.rounds}); {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
