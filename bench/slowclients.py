"""A keyed client's answers while slow or idle sockets hold the proxy's door.

    python -m bench.slowclients [--sockets 0,100,400] [--duration 20] [--repeats 2]

The stack of `bench.latency` (the stand-in upstream made resident by the manager, the
proxy in front, keys on). For each count N of `--sockets`, N sockets without a key are
held open against the proxy from many loopback addresses (`--per-address` each, under
the proxy's per-address cap), a third each of three kinds:

- *idle*: connects and sends nothing;
- *slow headers*: a request's head one byte every 0.3 s, never finished;
- *slow body*: a whole head announcing 1 MB, then the body one byte every 0.3 s.

Whenever the proxy closes one (its deadlines, `wire.http_server`), it is opened again,
so N stay open or opening for the whole run, as an attacker would keep them. Meanwhile
wrk (one connection, keep-alive, the API key) sends the benchmark's chat request as
fast as answers come. Each point records wrk's latencies, req/s and errors, how many
slow sockets the proxy closed and how long each had been open, and the proxy's CPU; the
N = 0 point is the plain latency run it is compared with, side by side in the same
process, repeat by repeat.

Writes bench/results/slowclients.json (and .csv); `python -m bench.report` shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

from bench import procstat, stack, wrk
from bench.common import command_line, fmt, median, percentile, ratio, table, write_csv, write_json
from bench.latency import BODY, MODEL, PATH

KINDS = ("idle", "slow headers", "slow body")
TRICKLE_S = 0.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", default="0,100,400", help="comma list of slow-socket counts")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per point")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--per-address", type=int, default=16, help="slow sockets per 127.x address")
    p.add_argument("--output", default="slowclients", help="result name under bench/results/")
    stack.add_env_option(p)
    return p.parse_args(argv)


class SlowSockets:
    """Keeps `count` slow sockets open against host:port, reopening each one the server
    closes; records how long each closed one had been open, by kind."""

    def __init__(self, host: str, port: int, count: int, per_address: int) -> None:
        self.host, self.port = host, port
        self.count, self.per_address = count, per_address
        self.closed: dict[str, list[float]] = {k: [] for k in KINDS}
        self.answers: dict[str, dict[str, int]] = {k: {} for k in KINDS}
        self.failed_opens = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for i in range(self.count):
            source = f"127.0.{10 + i // self.per_address // 250}.{1 + i // self.per_address % 250}"
            self._tasks.append(asyncio.create_task(self._hold(KINDS[i % 3], source)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _hold(self, kind: str, source: str) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, local_addr=(source, 0)
                )
            except OSError:
                self.failed_opens += 1
                await asyncio.sleep(0.5)
                continue
            opened = time.monotonic()
            feeder = asyncio.create_task(self._feed(kind, writer))
            answer = b""
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(4096):
                    answer += chunk
            feeder.cancel()
            writer.close()
            self.closed[kind].append(time.monotonic() - opened)
            status = answer[9:12].decode(errors="replace") if answer else "closed"
            self.answers[kind][status] = self.answers[kind].get(status, 0) + 1

    async def _feed(self, kind: str, writer: asyncio.StreamWriter) -> None:
        if kind == "idle":
            return
        host = f"{self.host}:{self.port}"
        if kind == "slow headers":
            writer.write(f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
        else:
            writer.write(
                f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000000\r\n\r\n{".encode()
            )
        with contextlib.suppress(ConnectionError):
            while not writer.transport.is_closing():
                await asyncio.sleep(TRICKLE_S)
                writer.write(b" ")
                await writer.drain()


async def point(
    setup: stack.OneModel, url: str, body_file, header_file, n: int, args: argparse.Namespace
) -> dict:
    host, port = setup.proxied or setup.direct
    slow = SlowSockets(host, port, n, args.per_address)
    slow.start()
    await asyncio.sleep(1.0 if n else 0.0)  # let them connect before measuring
    window = procstat.CpuWindow(setup.groups()).start()
    run = await asyncio.to_thread(
        wrk.run, url, body_file, 1, args.duration, header_file=header_file
    )
    window.stop()
    await slow.stop()
    run.update(
        sockets=n,
        cpu_s=dict(window.used),
        other_cpu_s=max(0.0, window.system_busy - sum(window.used.values()) - run["client_cpu_s"]),
        wall_s=window.wall,
        closed={k: len(v) for k, v in slow.closed.items()},
        open_s_p50={k: (median(v) if v else None) for k, v in slow.closed.items()},
        open_s_max={k: (max(v) if v else None) for k, v in slow.closed.items()},
        answers=slow.answers,
        failed_opens=slow.failed_opens,
    )
    return run


def measure(args: argparse.Namespace) -> dict:
    counts = [int(c) for c in args.sockets.split(",") if c.strip()]
    result: dict = {
        "benchmark": "slowclients",
        "machine": procstat.machine(),
        "command": command_line("bench.slowclients", sys.argv[1:]),
        "settings": {
            "sockets": counts,
            "duration_s": args.duration,
            "repeats": args.repeats,
            "per_address": args.per_address,
            "kinds": list(KINDS),
            "trickle_s": TRICKLE_S,
            "env": stack.parse_env(args.env),
            "client": "wrk, 1 connection, keep-alive, with the API key",
        },
        "runs": [],
    }
    with stack.Stack("slowclients", extra_env=stack.parse_env(args.env)) as st:
        setup = stack.one_model(st, stack.free_ports(3), MODEL, [], False)
        body_file = st.workdir / "body.json"
        body_file.write_text(json.dumps(BODY))
        header_file = st.workdir / "headers.txt"
        header_file.write_text("".join(f"{k}: {v}\n" for k, v in setup.headers.items()))
        assert setup.proxied is not None
        url = f"http://{setup.proxied[0]}:{setup.proxied[1]}{PATH}"
        wrk.run(url, body_file, 1, 3, header_file=header_file)  # warm-up
        for rep in range(args.repeats):
            for n in counts:
                run = asyncio.run(point(setup, url, body_file, header_file, n, args))
                run["repeat"] = rep
                result["runs"].append(run)
                lat = run["latency_us"]
                print(
                    f"  rep {rep + 1}/{args.repeats} slow={n:<4} p50 {lat['p50'] / 1000:7.3f} ms "
                    f"p99 {lat['p99'] / 1000:7.3f} ms {run['rps']:8.0f} req/s errors "
                    f"{run['non_2xx'] + run['socket_errors']} closed {sum(run['closed'].values())}",
                    file=sys.stderr,
                    flush=True,
                )
    result["summary"] = summarise(result["runs"], counts)
    return result


def summarise(runs: list[dict], counts: list[int]) -> list[dict]:
    base = [r for r in runs if r["sockets"] == 0]
    base_p99 = median([r["latency_us"]["p99"] for r in base]) if base else None
    rows = []
    for n in counts:
        mine = [r for r in runs if r["sockets"] == n]
        if not mine:
            continue
        p99 = median([r["latency_us"]["p99"] for r in mine])
        requests = sum(r["requests"] for r in mine)
        proxy_cpu = sum(r["cpu_s"].get("proxy", 0.0) for r in mine)
        rows.append(
            {
                "sockets": n,
                "p50_ms": median([r["latency_us"]["p50"] for r in mine]) / 1000,
                "p99_ms": p99 / 1000,
                "p99_vs_none": ratio(p99, base_p99) if base_p99 else None,
                "rps": median([r["rps"] for r in mine]),
                "errors": sum(r["non_2xx"] + r["socket_errors"] for r in mine),
                "requests": requests,
                "proxy_cpu_ms_per_req": proxy_cpu / requests * 1000 if requests else None,
                "closed": {k: sum(r["closed"][k] for r in mine) for k in KINDS},
                "open_s_max": {
                    k: max((r["open_s_max"][k] for r in mine if r["open_s_max"][k]), default=None)
                    for k in KINDS
                },
                "other_load": percentile(
                    [r["other_cpu_s"] / r["wall_s"] for r in mine if r["wall_s"]], 50
                ),
            }
        )
    return rows


def render(result: dict) -> str:
    rows = [
        [
            s["sockets"],
            fmt(s["p50_ms"], 3),
            fmt(s["p99_ms"], 3),
            fmt(s["p99_vs_none"]),
            fmt(s["rps"], 0),
            f"{s['errors']} of {s['requests']}",
            fmt(s["proxy_cpu_ms_per_req"], 3),
            " / ".join(str(s["closed"][k]) for k in KINDS),
            " / ".join(fmt(s["open_s_max"][k], 1) for k in KINDS),
            fmt(s["other_load"]),
        ]
        for s in result["summary"]
    ]
    return table(
        [
            "slow sockets",
            "keyed p50 ms",
            "keyed p99 ms",
            "p99 vs none",
            "req/s",
            "errors",
            "proxy CPU ms/req",
            "closed (idle / headers / body)",
            "longest open s (idle / headers / body)",
            "other load (cores)",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not wrk.available():
        print("slowclients: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    result = measure(args)
    write_json(args.output, result)
    write_csv(
        args.output,
        [
            {k: v for k, v in r.items() if not isinstance(v, dict | list)}
            | {f"closed_{k}": r["closed"][k] for k in KINDS}
            for r in result["runs"]
        ],
    )
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
