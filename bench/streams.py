"""Job streams: what N ``/stream/{taskId}`` readers of one task cost the proxy, side by side.

    python -m bench.streams                   # 1 and 150 streams, 10 s each
    python -m bench.streams --counts 1,32,150 --window 20

Issue 23's probe: 150 streams on one task cost 45% of a core when every stream read
the store every 0.25 s. Now one watcher per task reads the store and fans out to its
streams (proxy/jobs/watch.py). One stack (the stand-in model server, the real manager
and proxy, ``HOMELAB_MAX_STREAMS_PER_KEY`` raised to the largest count: the default cap
of 32 per key, and of 128 connections per client address, would refuse the rest, which
tests/integration/jobs/test_jobs_bounds.py checks). For each count: a chat job whose answer streams for longer than the window
(a chunk every ``--gap-ms``; the proxy sends a token event at most every 0.1 s), that
many streams opened on it, then the proxy's CPU and resident memory over ``--window``
seconds while every stream reads; an idle window (no stream) first, as the floor.
Compare the ratios (CPU at N streams over CPU at one), not the absolute figures.
Writes bench/results/streams.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httpx

from bench import procstat, stack
from bench.common import fmt, ratio, run_bench, table

MODEL = "bench-streams"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="1,150", help="comma list of stream counts")
    p.add_argument("--window", type=float, default=10.0, help="seconds measured per count")
    p.add_argument("--gap-ms", type=float, default=20.0, help="the model's gap between chunks")
    p.add_argument("--output", default="streams")
    stack.add_env_option(p)
    return p.parse_args(argv)


async def _read(client: httpx.AsyncClient, path: str, opened: asyncio.Event) -> int:
    """Read one stream to its end; returns how many stored events it got."""
    events = 0
    async with client.stream("GET", path) as resp:
        resp.raise_for_status()
        opened.set()
        async for line in resp.aiter_lines():
            events += line.startswith("id:")
    return events


async def one_count(base: str, headers: dict[str, str], count: int, args, groups) -> dict:
    """`count` streams on one running chat job: the proxy's CPU and RSS over the window."""
    chunks = int((args.window + 20) * 1000 / args.gap_ms)  # outlasts the window
    limits = httpx.Limits(max_connections=count + 4, max_keepalive_connections=count + 4)
    timeout = httpx.Timeout(args.window + 120)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=timeout
    ) as client:
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "create_message",
            "params": {"model": MODEL, "message": "count", "options": {"max_tokens": chunks}},
        }
        task = (await client.post("/rpc", json=call)).json()["result"]
        opened = [asyncio.Event() for _ in range(count)]
        readers = [asyncio.create_task(_read(client, task["stream"], o)) for o in opened]
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 60)
        await asyncio.sleep(1.0)  # every stream past its replay
        sampler = procstat.RssSampler(groups)
        cpu = procstat.CpuWindow({n: get() for n, get in groups.items()}).start()
        with sampler:
            await asyncio.sleep(args.window)
        cpu.stop()
        cancel = {**call, "method": "tasks.cancel", "params": {"taskId": task["taskId"]}}
        await client.post("/rpc", json=cancel)
        events = await asyncio.wait_for(asyncio.gather(*readers), 120)
    return {
        "streams": count,
        "proxy_cpu_share": cpu.used["proxy"] / cpu.wall,
        "other_load_share": max(0.0, cpu.system_busy - sum(cpu.used.values())) / cpu.wall,
        "proxy_peak_kib": sampler.peak["proxy"],
        "events_per_stream": min(events),
        "complete": all(e == events[0] for e in events),
    }


def measure(args: argparse.Namespace) -> dict:
    counts = [int(c) for c in args.counts.split(",")]
    # Both caps a single client meets raised: streams per key, connections per address.
    caps = {"HOMELAB_MAX_STREAMS_PER_KEY": max(counts)}
    caps["HOMELAB_PROXY_MAX_CONNECTIONS_PER_ADDRESS"] = max(counts) + 16
    env = {k: str(v) for k, v in caps.items()} | stack.parse_env(args.env)
    ports = stack.free_ports(3)
    result: dict = {
        "benchmark": "streams",
        "machine": procstat.machine(),
        "settings": vars(args) | {"unit": "cpu_share: CPU seconds per wall second (1 core = 1.0)"},
        "runs": [],
    }
    with stack.Stack("streams", extra_env=env) as st:
        setup = stack.one_model(
            st,
            ports,
            MODEL,
            ["--stream-chunks", "100000", "--stream-gap-ms", str(args.gap_ms)],
            False,
        )
        assert setup.proxy_pid is not None and setup.proxied is not None
        groups = {"proxy": lambda: procstat.tree(setup.proxy_pid)}
        base = f"http://{setup.proxied[0]}:{setup.proxied[1]}"
        idle = procstat.CpuWindow({"proxy": groups["proxy"]()}).start()
        time.sleep(args.window)
        idle.stop()
        result["idle_proxy_cpu_share"] = idle.used["proxy"] / idle.wall
        for count in counts:
            run = asyncio.run(one_count(base, setup.headers, count, args, groups))
            result["runs"].append(run)
            print(f"  {count} streams: proxy {run['proxy_cpu_share']:.1%}", file=sys.stderr)
    return result


def render(result: dict) -> str:
    runs = result["runs"]
    one = runs[0]["proxy_cpu_share"] if runs else 0.0
    rows: list[list[object]] = [
        ["none (idle)", f"{result['idle_proxy_cpu_share'] * 100:.1f}%", "", "", "", ""]
    ]
    for r in runs:
        rows.append(
            [
                r["streams"],
                f"{r['proxy_cpu_share'] * 100:.1f}%",
                fmt(ratio(r["proxy_cpu_share"], one), 1),
                fmt(r["proxy_peak_kib"] / 1024, 1),
                r["events_per_stream"],
                f"{r['other_load_share'] * 100:.0f}%",
            ]
        )
    return table(
        [
            "streams on one task",
            "proxy CPU (1 core = 100%)",
            f"x the first row's ({runs[0]['streams'] if runs else '-'})",
            "proxy peak MiB",
            "events per stream",
            "other load",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    return run_bench("bench.streams", argv, parse_args, measure, render)


if __name__ == "__main__":
    sys.exit(main())
