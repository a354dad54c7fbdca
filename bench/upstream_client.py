"""The proxy's two candidate upstream clients side by side: the lean one (proxy/upstream.py)
and aiohttp's, doing what the proxy does with a model server's answer.

    python -m bench.upstream_client                      # 6 rounds, c = 1 and 16, plain + stream
    python -m bench.upstream_client --rounds 10 --requests 3000

One stand-in model server (bench/upstream.py, its own process) serves both. In one
process, under uvloop (as the proxy runs), each round runs every case (plain chat
answer read whole; a 20-chunk stream read chunk by chunk) at each concurrency with
each client, the two clients back to back, their order swapped every round, so
background noise on a shared machine hits both alike. Each client is set up as the
proxy sets it up (keep-alive, no decompression, connect and read timeouts).

What is compared: CPU time of this process per request (the client's own cost; the
harness's share is the same for both) and the latency per request; medians over the
rounds. Writes bench/results/upstream-client.json and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from bench import procstat
from bench.common import command_line, median, percentile, write_json
from bench.report import upstream_client_table
from proxy.upstream import UpstreamPool

PORT = 18680
HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
PLAIN = orjson.dumps(
    {"model": "bench-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
)
STREAM = orjson.dumps(
    {
        "model": "bench-a",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        "stream": True,
    }
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=2000, help="requests per case and client")
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--output", default="upstream-client")
    return p.parse_args(argv)


class Lean:
    name = "lean"

    def __init__(self) -> None:
        self.pool = UpstreamPool(keepalive_timeout=30.0)

    async def once(self, url: str, body: bytes, stream: bool) -> int:
        resp = await self.pool.post(url, body, HEADERS, connect_timeout=10.0, read_timeout=600.0)
        try:
            if stream:
                n = 0
                async for chunk in resp.iter_chunks():
                    n += len(chunk)
                return n
            return len(await resp.read(256 << 20))
        finally:
            resp.close()

    async def aclose(self) -> None:
        await self.pool.aclose()


class Aiohttp:
    name = "aiohttp"

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0),
            auto_decompress=False,
        )
        self.timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=600.0)

    async def once(self, url: str, body: bytes, stream: bool) -> int:
        async with self.session.post(url, data=body, headers=HEADERS, timeout=self.timeout) as resp:
            if stream:
                n = 0
                async for chunk in resp.content.iter_any():
                    n += len(chunk)
                return n
            return len(await resp.read())

    async def aclose(self) -> None:
        await self.session.close()


async def run_case(client, url: str, stream: bool, clients: int, requests: int) -> dict:
    body = STREAM if stream else PLAIN
    latencies: list[float] = []
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t = time.perf_counter()
            await client.once(url, body, stream)
            latencies.append(time.perf_counter() - t)

    for _ in range(clients):  # warm the connections
        await client.once(url, body, stream)
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {
        "client": client.name,
        "case": "stream" if stream else "plain",
        "clients": clients,
        "requests": len(latencies),
        "cpu_us_per_req": cpu / len(latencies) * 1e6,
        "req_per_s": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


async def bench(args: argparse.Namespace) -> list[dict]:
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    lean, aio = Lean(), Aiohttp()
    runs: list[dict] = []
    try:
        for rnd in range(args.rounds):
            order = [lean, aio] if rnd % 2 == 0 else [aio, lean]
            for clients in [int(c) for c in args.concurrency.split(",")]:
                for stream in (False, True):
                    for client in order:
                        run = await run_case(client, url, stream, clients, args.requests)
                        run["round"] = rnd
                        runs.append(run)
            print(f"round {rnd + 1}/{args.rounds} done, load {procstat.loadavg()}", flush=True)
    finally:
        await lean.aclose()
        await aio.aclose()
    return runs


def summary(runs: list[dict]) -> list[dict]:
    keys = sorted({(r["case"], r["clients"]) for r in runs}, key=lambda k: (k[1], k[0]))
    out = []
    for case, clients in keys:
        row: dict = {"case": case, "clients": clients}
        for name in ("lean", "aiohttp"):
            mine = [
                r for r in runs if (r["case"], r["clients"], r["client"]) == (case, clients, name)
            ]
            for field in ("cpu_us_per_req", "req_per_s", "p50_ms", "p99_ms"):
                row[f"{name}_{field}"] = median([r[field] for r in mine])
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = procstat.machine()
    upstream = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("upstream.py")),
            "--port",
            str(args.port),
            "--served-model-name",
            "bench-a",
            "--stream-chunks",
            "20",
            "--stream-gap-ms",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.stdout is not None
        print(upstream.stdout.readline().strip(), flush=True)  # serving on ...
        import uvloop

        runs = uvloop.run(bench(args))
        load_end = procstat.loadavg()
    finally:
        upstream.terminate()
        upstream.wait(10)
    rows = summary(runs)
    write_json(
        args.output,
        {
            "machine": machine,
            "command": command_line("bench.upstream_client", argv),
            "settings": vars(args),
            "loadavg_at_end": load_end,
            "pid": os.getpid(),
            "runs": runs,
            "summary": rows,
        },
    )
    print(upstream_client_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
