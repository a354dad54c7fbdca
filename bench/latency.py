"""Added latency: the same non-streaming chat request, direct to the upstream and through the proxy.

    python -m bench.latency                  # full run: direct vs proxy (+ manager), c = 1, 16, 64
    python -m bench.latency --direct-only    # the harness alone, on the direct path

The stand-in upstream (bench/upstream.py) is started by the manager's process
runtime from a models.json ``command``, and made resident before measuring, so
every proxied request is: client -> proxy -> (lease from the manager) -> upstream.
The direct path hits that same upstream process. For each repeat and each
concurrency the two paths run back to back, so background noise hits both alike;
each figure is the median over the repeats.

Besides wrk's latencies and requests per second, every run records the CPU seconds
each process used (proxy, manager, upstream, the wrk client) and the CPU the rest
of the machine used meanwhile (``other_cpu``: other people's work on a shared box);
CPU per request is the figure that travels between machines.

Writes bench/results/latency.json (machine, settings, every run, the summary) and
bench/results/latency.csv (one row per run), and prints the summary table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from bench import httpraw, procstat, stack, wrk
from bench.common import (
    command_line,
    fmt,
    median,
    percentile,
    ratio,
    read_json,
    table,
    write_csv,
    write_json,
)

MODEL = "bench-a"
BODY = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Say hello in five words."},
    ],
    "max_tokens": 16,
    "temperature": 0,
}
PATH = "/v1/chat/completions"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,16,64", help="comma list of wrk connections")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of unrecorded load per path first"
    )
    p.add_argument(
        "--direct-only", action="store_true", help="no proxy/manager: validate the harness"
    )
    p.add_argument(
        "--pin",
        default=None,
        metavar="CLIENT:SERVERS",
        help="taskset CPU lists, e.g. '0:1' puts wrk on CPU 0 and every server on CPU 1",
    )
    p.add_argument(
        "--lease-samples", type=int, default=1000, help="lease+release round trips timed alone"
    )
    p.add_argument("--output", default="latency", help="result file name under bench/results/")
    p.add_argument(
        "--proxy-module",
        default="proxy",
        help="what `python -m` runs as the proxy (an experiment under bench/experiments/, say)",
    )
    p.add_argument(
        "--manager-module", default="manager", help="what `python -m` runs as the manager"
    )
    p.add_argument(
        "--leases-only",
        action="store_true",
        help="only time lease round trips against the manager (no wrk runs)",
    )
    p.add_argument(
        "--merge",
        default=None,
        metavar="NAME,NAME",
        help="measure nothing: merge earlier results (bench/results/NAME.json, e.g. runs of one "
        "revision interleaved with runs of another on a noisy machine) into --output, the "
        "summary taken over all their runs",
    )
    stack.add_env_option(p)
    return p.parse_args(argv)


def _pin(pid_list: list[int], cpus: str | None) -> None:
    if not cpus:
        return
    import subprocess

    for pid in pid_list:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", cpus, str(pid)], capture_output=True, check=False
        )


def _sanity(
    direct: tuple[str, int], proxied: tuple[str, int] | None, headers: dict[str, str]
) -> dict:
    """One request per path; the proxied answer must be byte-identical to the direct one."""
    body = json.dumps(BODY).encode()

    async def go() -> dict:
        d = await httpraw.request_once(*direct, "POST", PATH, body, headers, 30)
        out = {"direct_status": d.status, "direct_bytes": len(d.body)}
        if d.status != 200:
            raise SystemExit(f"direct request failed: {d.status} {d.body[:300]!r}")
        if proxied is not None:
            p = await httpraw.request_once(*proxied, "POST", PATH, body, headers, 30)
            out.update(
                proxied_status=p.status, proxied_bytes=len(p.body), identical=p.body == d.body
            )
            if p.status != 200:
                raise SystemExit(f"proxied request failed: {p.status} {p.body[:300]!r}")
            if p.body != d.body:
                raise SystemExit(
                    f"proxied body differs from direct:\n{p.body[:300]!r}\n{d.body[:300]!r}"
                )
        return out

    return asyncio.run(go())


def _lease_roundtrips(st: stack.Stack, n: int) -> dict | None:
    """Time `n` sequential lease grants and releases on one keep-alive connection (the manager alone)."""
    if n <= 0 or st.manager_port is None:
        return None

    async def go() -> dict:
        conn = httpraw.Connection(stack.HOST, st.manager_port)
        grant, release = [], []
        body = json.dumps({"model": MODEL}).encode()
        try:
            for _ in range(n):
                r = await conn.request("POST", "/v1/leases", body, st.manager_headers(), 30)
                if r.status != 200:
                    raise SystemExit(f"lease failed: {r.status} {r.body[:300]!r}")
                grant.append(r.latency_ns / 1e6)
                lease_id = json.loads(r.body)["lease_id"]
                r = await conn.request(
                    "DELETE", f"/v1/leases/{lease_id}", None, st.manager_headers(), 30
                )
                if r.status not in (200, 204):
                    raise SystemExit(f"release failed: {r.status} {r.body[:300]!r}")
                release.append(r.latency_ns / 1e6)
        finally:
            await conn.close()
        return {
            "samples": n,
            "grant_ms": {
                p: percentile(grant, q) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))
            },
            "release_ms": {
                p: percentile(release, q) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))
            },
        }

    mgr = st.find("manager")
    before = procstat.cpu_seconds(procstat.tree(mgr.pid)) if mgr else 0.0
    out = asyncio.run(go())
    if mgr:
        out["manager_cpu_ms_per_roundtrip"] = (
            (procstat.cpu_seconds(procstat.tree(mgr.pid)) - before) * 1000 / n
        )
    return out


def measure(args: argparse.Namespace) -> dict:
    ports = stack.free_ports(3)  # upstream, manager, proxy
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.leases_only:
        concurrencies = []
    client_cpus, server_cpus = (args.pin.split(":", 1) + [None])[:2] if args.pin else (None, None)
    result: dict = {
        "benchmark": "latency",
        "machine": procstat.machine(),
        "settings": {
            "env": stack.parse_env(args.env),
            "concurrency": concurrencies,
            "duration_s": args.duration,
            "repeats": args.repeats,
            "warmup_s": args.warmup,
            "pin": args.pin,
            "direct_only": args.direct_only,
            "proxy_module": args.proxy_module,
            "manager_module": args.manager_module,
            "request_body": BODY,
            "client": "wrk, 1 thread, keep-alive",
        },
        "runs": [],
    }
    with stack.Stack("latency", extra_env=stack.parse_env(args.env)) as st:
        setup = stack.one_model(
            st, ports, MODEL, [], args.direct_only, args.proxy_module, args.manager_module
        )
        groups = setup.groups()
        headers = setup.headers
        direct, proxied = setup.direct, setup.proxied
        _pin([p for pids in groups.values() for p in pids], server_cpus)
        result["sanity"] = _sanity(direct, proxied, headers)

        workdir = st.workdir
        body_file = workdir / "body.json"
        body_file.write_text(json.dumps(BODY))
        header_file = workdir / "headers.txt"
        header_file.write_text("".join(f"{k}: {v}\n" for k, v in headers.items()))
        paths = {"direct": direct}
        if proxied:
            paths["proxied"] = proxied

        def url(target: tuple[str, int]) -> str:
            return f"http://{target[0]}:{target[1]}{PATH}"

        for target in paths.values():
            if args.warmup > 0 and concurrencies:
                wrk.run(
                    url(target),
                    body_file,
                    16,
                    args.warmup,
                    header_file=header_file,
                    cpus=client_cpus,
                )
        for rep in range(args.repeats):
            for conc in concurrencies:
                for name, target in paths.items():
                    window = procstat.CpuWindow(groups).start()
                    run = wrk.run(
                        url(target),
                        body_file,
                        conc,
                        args.duration,
                        header_file=header_file,
                        cpus=client_cpus,
                    )
                    window.stop()
                    ours = sum(window.used.values()) + run["client_cpu_s"]
                    run.update(
                        path=name,
                        repeat=rep,
                        cpu_s={**window.used, "client": run["client_cpu_s"]},
                        system_busy_s=window.system_busy,
                        other_cpu_s=max(0.0, window.system_busy - ours),
                        wall_s=window.wall,
                        at=time.time(),
                    )
                    result["runs"].append(run)
                    lat = run["latency_us"]
                    print(
                        f"  rep {rep + 1}/{args.repeats} c={conc:<3} {name:<8} "
                        f"p50 {lat['p50'] / 1000:7.3f} ms  p99 {lat['p99'] / 1000:7.3f} ms  "
                        f"{run['rps']:9.0f} req/s  errors {run['non_2xx'] + run['socket_errors']}",
                        file=sys.stderr,
                        flush=True,
                    )
        if not args.direct_only:
            result["lease_roundtrip"] = _lease_roundtrips(st, args.lease_samples)
    result["summary"] = summarise(result["runs"], concurrencies)
    return result


def merge(names: list[str]) -> dict:
    """One result from several runs of `bench.latency` (same settings): every run kept
    (tagged with its file), the summary recomputed over all of them, each file's machine
    (load average at start, commit) and lease round trip listed."""
    parts = []
    for name in names:
        found = read_json(name)
        if found is None:
            raise SystemExit(f"bench/results/{name}.json not found")
        parts.append(found)
    first = parts[0]
    runs = [
        {**run, "source": name}
        for name, part in zip(names, parts, strict=True)
        for run in part["runs"]
    ]
    concurrencies = first["settings"]["concurrency"]
    return {
        **first,
        "settings": {**first["settings"], "repeats": sum(p["settings"]["repeats"] for p in parts)},
        "merged": [
            {"name": n, "command": p.get("command"), "machine": p["machine"]}
            for n, p in zip(names, parts, strict=True)
        ],
        "lease_roundtrips": [p.get("lease_roundtrip") for p in parts],
        "runs": runs,
        "summary": summarise(runs, concurrencies),
    }


def summarise(runs: list[dict], concurrencies: list[int]) -> list[dict]:
    """Median over repeats of each figure, per concurrency, both paths side by side."""
    out = []
    for conc in concurrencies:
        row: dict = {"concurrency": conc}
        for path in ("direct", "proxied"):
            mine = [r for r in runs if r["connections"] == conc and r["path"] == path]
            if not mine:
                continue
            figures = {
                f"{q}_ms": median([r["latency_us"][q] / 1000 for r in mine])
                for q in ("p50", "p95", "p99")
            }
            figures["rps"] = median([r["rps"] for r in mine])
            figures["errors"] = sum(r["non_2xx"] + r["socket_errors"] for r in mine)
            figures["requests"] = sum(r["requests"] for r in mine)
            cores = os.cpu_count() or 1
            figures["other_cpu_share"] = median(
                [r["other_cpu_s"] / r["wall_s"] / cores for r in mine]
            )
            for comp in ("proxy", "manager", "upstream", "client"):
                per = [
                    r["cpu_s"][comp] / r["requests"] * 1000
                    for r in mine
                    if comp in r["cpu_s"] and r["requests"]
                ]
                if per:
                    figures[f"{comp}_cpu_ms_per_req"] = median(per)
            row[path] = figures
        if "direct" in row and "proxied" in row:
            d, p = row["direct"], row["proxied"]
            row["added_ms"] = {q: p[f"{q}_ms"] - d[f"{q}_ms"] for q in ("p50", "p95", "p99")}
            row["latency_ratio"] = {
                q: ratio(p[f"{q}_ms"], d[f"{q}_ms"]) for q in ("p50", "p95", "p99")
            }
            row["rps_ratio"] = ratio(p["rps"], d["rps"])
        out.append(row)
    return out


def render(result: dict) -> str:
    rows = []
    for row in result["summary"]:
        d, p = row.get("direct", {}), row.get("proxied")
        if p is None:
            rows.append(
                [
                    row["concurrency"],
                    fmt(d["p50_ms"], 3),
                    fmt(d["p95_ms"], 3),
                    fmt(d["p99_ms"], 3),
                    f"{d['rps']:.0f}",
                ]
            )
            continue
        a = row["added_ms"]
        rows.append(
            [
                row["concurrency"],
                f"{fmt(d['p50_ms'], 3)} / {fmt(p['p50_ms'], 3)}",
                f"{fmt(d['p95_ms'], 3)} / {fmt(p['p95_ms'], 3)}",
                f"{fmt(d['p99_ms'], 3)} / {fmt(p['p99_ms'], 3)}",
                f"+{fmt(a['p50'], 3)} / +{fmt(a['p95'], 3)} / +{fmt(a['p99'], 3)}",
                f"{d['rps']:.0f} / {p['rps']:.0f}",
                fmt(row["rps_ratio"], 3),
                fmt(p.get("proxy_cpu_ms_per_req"), 3),
                fmt(p.get("manager_cpu_ms_per_req"), 3),
                p["errors"],
            ]
        )
    if result["settings"]["direct_only"]:
        return table(["clients", "p50 ms", "p95 ms", "p99 ms", "req/s"], rows)
    return table(
        [
            "clients",
            "p50 ms direct / proxied",
            "p95 ms",
            "p99 ms",
            "added ms p50 / p95 / p99",
            "req/s direct / proxied",
            "req/s ratio",
            "proxy CPU ms/req",
            "manager CPU ms/req",
            "errors",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        result = merge([n.strip() for n in args.merge.split(",") if n.strip()])
        first_command = result.get("command", "python -m bench.latency")
        result["command"] = f"{first_command} (merged: {args.merge})"
    else:
        result = measure(args)
        result["command"] = command_line("bench.latency", argv)
    path = write_json(args.output, result)
    csv_rows = []
    for r in result["runs"]:
        row = {k: v for k, v in r.items() if not isinstance(v, dict)}
        row.update({f"lat_{k}_us": v for k, v in r["latency_us"].items()})
        row.update({f"cpu_{k}_s": v for k, v in r["cpu_s"].items()})
        csv_rows.append(row)
    write_csv(args.output, csv_rows)
    print(render(result))
    if result.get("lease_roundtrip"):
        lr = result["lease_roundtrip"]
        print(
            f"manager lease round trip alone (c=1, {lr['samples']} samples): grant p50 {lr['grant_ms']['p50']:.3f} ms, "
            f"release p50 {lr['release_ms']['p50']:.3f} ms"
        )
    print(f"raw numbers: {path} and {Path(path).with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
