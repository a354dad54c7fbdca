"""The proxy's app under each HTTP server we weighed (issue 23), side by side.

    python -m bench.servers [--servers uvicorn-guarded,uvicorn-plain,granian,hypercorn]
                            [--concurrency 1,64] [--duration 8] [--repeats 2]

Each server runs the same app (`proxy.app.create_app`) in front of the same manager and
stand-in upstream (`bench.latency`'s stack, started anew per server and repeat, the
servers taking turns so that the machine's other load falls on each alike):

- *uvicorn-guarded*: what ships, `python -m proxy` (uvicorn, httptools, uvloop, with
  `wire.http_server.GuardedProtocol`: the deadlines and caps of docs/security.md);
- *uvicorn-plain*: uvicorn as the proxy ran before issue 23 (no deadlines);
- *granian* (`bench/experiments/granian_proxy.py`) and *hypercorn*
  (`bench/experiments/hypercorn_proxy.py`): kept servers, `pip install -e '.[bench-servers]'`;
  a server whose package is missing is reported as not run.

Figures per server: the proxy's CPU per request, the added p50/p99 at one client, and
the 64-client p99 against its p50. Writes bench/results/servers.json; `python -m
bench.report` shows it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from bench import latency, procstat
from bench.common import command_line, fmt, median, table, write_json

SERVERS = {
    "uvicorn-guarded": ("proxy", None),
    "uvicorn-plain": ("bench.experiments.plain_uvicorn_proxy", None),
    "granian": ("bench.experiments.granian_proxy", "granian"),
    "hypercorn": ("bench.experiments.hypercorn_proxy", "hypercorn"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--concurrency", default="1,64")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--output", default="servers")
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> dict:
    names = [n for n in args.servers.split(",") if n]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise SystemExit(f"servers: unknown {unknown}; choose from {sorted(SERVERS)}")
    missing = {n: pkg for n, (_, pkg) in SERVERS.items() if pkg and n in names}
    missing = {n: pkg for n, pkg in missing.items() if importlib.util.find_spec(pkg) is None}
    result: dict = {
        "benchmark": "servers",
        "machine": procstat.machine(),
        "command": command_line("bench.servers", sys.argv[1:]),
        "settings": {
            "servers": names,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "repeats": args.repeats,
        },
        "not_run": {n: f"{pkg} is not installed" for n, pkg in missing.items()},
        "runs": {n: [] for n in names if n not in missing},
    }
    for rep in range(args.repeats):
        for name in result["runs"]:
            print(f"== {name}, repeat {rep + 1}/{args.repeats}", file=sys.stderr, flush=True)
            one = latency.measure(
                latency.parse_args(
                    [
                        "--concurrency",
                        args.concurrency,
                        "--duration",
                        str(args.duration),
                        "--repeats",
                        "1",
                        "--warmup",
                        "2",
                        "--lease-samples",
                        "0",
                        "--proxy-module",
                        SERVERS[name][0],
                    ]
                )
            )
            result["runs"][name] += one["runs"]
    result["summary"] = {
        name: summarise(runs, [int(c) for c in args.concurrency.split(",")])
        for name, runs in result["runs"].items()
    }
    return result


def summarise(runs: list[dict], concurrencies: list[int]) -> dict:
    rows = {row["concurrency"]: row for row in latency.summarise(runs, concurrencies)}
    one, many = rows.get(1), rows.get(max(concurrencies))
    out: dict = {}
    if one and "proxied" in one:
        out["cpu_ms_per_req_c1"] = one["proxied"].get("proxy_cpu_ms_per_req")
        out["added_p50_ms_c1"] = one["added_ms"]["p50"]
        out["added_p99_ms_c1"] = one["added_ms"]["p99"]
    if many and "proxied" in many:
        p = many["proxied"]
        out["clients"] = many["concurrency"]
        out["cpu_ms_per_req_cN"] = p.get("proxy_cpu_ms_per_req")
        out["p50_ms_cN"], out["p99_ms_cN"] = p["p50_ms"], p["p99_ms"]
        out["p99_over_p50_cN"] = p["p99_ms"] / p["p50_ms"] if p["p50_ms"] else None
        out["direct_p50_ms_cN"] = many["direct"]["p50_ms"]
    out["errors"] = sum(r["non_2xx"] + r["socket_errors"] for r in runs if r["path"] == "proxied")
    out["other_load"] = median([r["other_cpu_s"] / r["wall_s"] for r in runs if r["wall_s"]])
    return out


def signed(value: float | None) -> str:
    """An added time with its sign: a negative one says the run was noisier than the gap."""
    return "n/a" if value is None else f"{value:+.3f}"


def render(result: dict) -> str:
    rows = []
    for name, s in result["summary"].items():
        rows.append(
            [
                name,
                fmt(s.get("cpu_ms_per_req_c1"), 3),
                f"{signed(s.get('added_p50_ms_c1'))} / {signed(s.get('added_p99_ms_c1'))}",
                fmt(s.get("cpu_ms_per_req_cN"), 3),
                f"{fmt(s.get('p50_ms_cN'), 2)} / {fmt(s.get('p99_ms_cN'), 2)}",
                fmt(s.get("p99_over_p50_cN")),
                s["errors"],
                fmt(s["other_load"]),
            ]
        )
    for name, why in result.get("not_run", {}).items():
        rows.append([name, f"not run: {why}", "", "", "", "", "", ""])
    many = next((s.get("clients") for s in result["summary"].values() if s.get("clients")), "N")
    return table(
        [
            "server",
            "proxy CPU ms/req (1 client)",
            "added ms p50 / p99 (1 client)",
            f"proxy CPU ms/req ({many} clients)",
            f"p50 / p99 ms ({many} clients)",
            "p99 / p50",
            "errors",
            "other load (cores)",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    write_json(args.output, result)
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
