"""Streaming: time to first byte and the gap between chunks, direct versus through the proxy.

    python -m bench.streaming                # direct vs proxied, 1 and 16 concurrent streams
    python -m bench.streaming --direct-only  # the harness alone

The stand-in upstream writes a chunk every ``--gap-ms`` and stamps each with its
``time.monotonic_ns()`` (``x_sent_ns``). The client (bench/httpraw.py, on the same
machine and clock) timestamps every server-sent event as it arrives, so it knows
for every chunk how long it spent between the upstream's write and the client's
read ("delivery delay").

Proof that no chunk is held back: for every chunk but the last, the client had
already received it before the upstream even produced the next one
(arrival[k] < x_sent[k+1]). A proxy that buffered (whole response, or N bytes)
would fail that for most chunks; ``held_back`` counts the chunks that fail it.

Figures per (path, concurrency): time to the response headers, time to the first
chunk, inter-chunk gap (p50/p99/max), delivery delay (p50/p99/max); each the median
over ``--repeats``. Writes bench/results/streaming.json and .csv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bench import httpraw, procstat, stack
from bench.common import command_line, fmt, median, percentile, table, write_csv, write_json

MODEL = "bench-stream"
PATH = "/v1/chat/completions"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,16")
    p.add_argument(
        "--streams", type=int, default=32, help="streams per path, concurrency and repeat"
    )
    p.add_argument("--chunks", type=int, default=50, help="chunks per stream")
    p.add_argument("--gap-ms", type=float, default=10.0, help="the upstream's pause between chunks")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--direct-only", action="store_true")
    p.add_argument("--output", default="streaming")
    stack.add_env_option(p)
    return p.parse_args(argv)


def analyse(resp: httpraw.Response, chunks: int) -> dict:
    """Per-stream figures (milliseconds) and the held-back check."""
    data = [(t, e) for t, e in resp.events if e.startswith(b"data: ") and e != b"data: [DONE]"]
    done = any(e == b"data: [DONE]" for _, e in resp.events)
    arrivals = [t for t, _ in data]
    sent = []
    for _, e in data:
        try:
            sent.append(int(json.loads(e[6:])["x_sent_ns"]))
        except (ValueError, KeyError):
            sent.append(None)
    delays = [(a - s) / 1e6 for a, s in zip(arrivals, sent, strict=True) if s is not None]
    held = sum(
        1
        for k in range(len(data) - 1)
        if sent[k + 1] is not None and arrivals[k] >= sent[k + 1]  # type: ignore[operator]
    )
    gaps = [(b - a) / 1e6 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return {
        "status": resp.status,
        "complete": resp.status == 200 and len(data) == chunks and done,
        "chunks": len(data),
        "headers_ms": (resp.headers_ns - resp.sent_ns) / 1e6 if resp.headers_ns else None,
        "first_chunk_ms": (arrivals[0] - resp.sent_ns) / 1e6 if arrivals else None,
        "gaps_ms": gaps,
        "delays_ms": delays,
        "held_back": held,
        "content_type": resp.headers.get("content-type", ""),
    }


async def run_streams(
    target: tuple[str, int],
    headers: dict[str, str],
    concurrency: int,
    streams: int,
    chunks: int,
    model: str = MODEL,
) -> list[dict]:
    """Run `streams` streaming requests, `concurrency` at a time (one keep-alive connection each)."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Count slowly."}],
            "stream": True,
            "max_tokens": chunks,
        }
    ).encode()
    todo = list(range(streams))
    out: list[dict] = []

    async def worker() -> None:
        conn = httpraw.Connection(*target)
        try:
            while todo:
                todo.pop()
                resp = await conn.request("POST", PATH, body, headers, 120)
                out.append(analyse(resp, chunks))
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def figures(streams: list[dict]) -> dict:
    gaps = [g for s in streams for g in s["gaps_ms"]]
    delays = [d for s in streams for d in s["delays_ms"]]
    heads = [s["headers_ms"] for s in streams if s["headers_ms"] is not None]
    firsts = [s["first_chunk_ms"] for s in streams if s["first_chunk_ms"] is not None]
    return {
        "streams": len(streams),
        "incomplete": sum(1 for s in streams if not s["complete"]),
        "chunks": sum(s["chunks"] for s in streams),
        "held_back": sum(s["held_back"] for s in streams),
        "headers_p50_ms": percentile(heads, 50),
        "first_chunk_p50_ms": percentile(firsts, 50),
        "first_chunk_p99_ms": percentile(firsts, 99),
        "gap_p50_ms": percentile(gaps, 50),
        "gap_p99_ms": percentile(gaps, 99),
        "gap_max_ms": max(gaps) if gaps else None,
        "delay_p50_ms": percentile(delays, 50),
        "delay_p99_ms": percentile(delays, 99),
        "delay_max_ms": max(delays) if delays else None,
    }


def measure(args: argparse.Namespace) -> dict:
    ports = stack.free_ports(3)  # upstream, manager, proxy
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    result: dict = {
        "benchmark": "streaming",
        "machine": procstat.machine(),
        "settings": {
            "env": stack.parse_env(args.env),
            "concurrency": concurrencies,
            "streams": args.streams,
            "chunks": args.chunks,
            "gap_ms": args.gap_ms,
            "repeats": args.repeats,
            "direct_only": args.direct_only,
            "client": "bench/httpraw.py (asyncio, uvloop)",
        },
        "runs": [],
    }
    upstream_args = ["--stream-chunks", str(args.chunks), "--stream-gap-ms", str(args.gap_ms)]
    with stack.Stack("streaming", extra_env=stack.parse_env(args.env)) as st:
        setup = stack.one_model(st, ports, MODEL, upstream_args, args.direct_only)
        paths = {"direct": setup.direct}
        if setup.proxied:
            paths["proxied"] = setup.proxied
        runner = _runner()
        for target in paths.values():  # warm-up: connections, code paths
            runner(run_streams(target, setup.headers, 2, 4, 5))
        for rep in range(args.repeats):
            for conc in concurrencies:
                for name, target in paths.items():
                    streams = runner(
                        run_streams(target, setup.headers, conc, args.streams, args.chunks)
                    )
                    fig = figures(streams)
                    fig.update(path=name, concurrency=conc, repeat=rep)
                    fig["content_types"] = sorted({s["content_type"] for s in streams})
                    result["runs"].append(fig)
                    print(
                        f"  rep {rep + 1}/{args.repeats} c={conc:<3} {name:<8} first chunk p50 "
                        f"{fig['first_chunk_p50_ms']:.3f} ms  gap p99 {fig['gap_p99_ms']:.3f} ms  "
                        f"delay p99 {fig['delay_p99_ms']:.3f} ms  held back {fig['held_back']}/{fig['chunks']}",
                        file=sys.stderr,
                        flush=True,
                    )
    result["summary"] = summarise(result["runs"], concurrencies)
    return result


def _runner():
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


KEYS = (
    "headers_p50_ms",
    "first_chunk_p50_ms",
    "first_chunk_p99_ms",
    "gap_p50_ms",
    "gap_p99_ms",
    "gap_max_ms",
    "delay_p50_ms",
    "delay_p99_ms",
    "delay_max_ms",
)


def summarise(runs: list[dict], concurrencies: list[int]) -> list[dict]:
    out = []
    for conc in concurrencies:
        row: dict = {"concurrency": conc}
        for path in ("direct", "proxied"):
            mine = [r for r in runs if r["concurrency"] == conc and r["path"] == path]
            if not mine:
                continue
            fig = {k: median([r[k] for r in mine]) for k in KEYS}
            for k in ("streams", "incomplete", "chunks", "held_back"):
                fig[k] = sum(r[k] for r in mine)
            row[path] = fig
        if "direct" in row and "proxied" in row:
            row["added_ms"] = {k: row["proxied"][k] - row["direct"][k] for k in KEYS}
        out.append(row)
    return out


def render(result: dict) -> str:
    rows = []
    for row in result["summary"]:
        for path in ("direct", "proxied"):
            f = row.get(path)
            if not f:
                continue
            rows.append(
                [
                    row["concurrency"],
                    path,
                    fmt(f["headers_p50_ms"], 3),
                    f"{fmt(f['first_chunk_p50_ms'], 3)} / {fmt(f['first_chunk_p99_ms'], 3)}",
                    f"{fmt(f['gap_p50_ms'], 3)} / {fmt(f['gap_p99_ms'], 3)} / {fmt(f['gap_max_ms'], 3)}",
                    f"{fmt(f['delay_p50_ms'], 3)} / {fmt(f['delay_p99_ms'], 3)} / {fmt(f['delay_max_ms'], 3)}",
                    f"{f['held_back']} of {f['chunks']}",
                    f"{f['incomplete']} of {f['streams']}",
                ]
            )
    return table(
        [
            "streams at once",
            "path",
            "headers p50 ms",
            "first chunk p50 / p99 ms",
            "gap p50 / p99 / max ms",
            "delivery delay p50 / p99 / max ms",
            "chunks held back",
            "incomplete streams",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    result["command"] = command_line("bench.streaming", argv)
    path = write_json(args.output, result)
    write_csv(
        args.output,
        [{k: v for k, v in r.items() if not isinstance(v, list)} for r in result["runs"]],
    )
    print(render(result))
    print(
        f"(upstream gap {args.gap_ms} ms; 'held back' = a chunk that arrived after the next one was produced)"
    )
    print(f"raw numbers: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
