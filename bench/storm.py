"""A storm: hundreds of requests interleaved over two models, through the proxy and the manager.

    python -m bench.storm                     # 400 requests, 64 at a time, A/B/A/B..., process runtime
    python -m bench.storm --runtime docker    # the same on the real Docker engine (fakevllm image)

Request i asks for model A when i is even and B when it is odd, so both models
always have waiters and the manager's fairness rule (``HOMELAB_BATCH_BOUND``)
decides how often it swaps. Each model server takes ``--load-seconds`` to start.

Counts: answers by status and error code (and which component the envelope blames),
answers whose ``model`` is not the one asked for (a routing error), swaps the
manager performed (its ``swap`` events on ``GET /v1/events``), and the longest
wait. Writes bench/results/storm.json (summary and every request) and .csv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

from bench import httpraw, procstat, stack
from bench.common import command_line, fmt, percentile, table, write_csv, write_json

MODELS = ("storm-a", "storm-b")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--runtime", choices=("process", "docker"), default="process")
    p.add_argument(
        "--load-seconds", type=float, default=0.5, help="each model server's start-up time"
    )
    p.add_argument(
        "--batch-bound", type=int, default=None, help="HOMELAB_BATCH_BOUND (default: the manager's)"
    )
    p.add_argument(
        "--queue-limit", type=int, default=None, help="HOMELAB_QUEUE_LIMIT (default: the manager's)"
    )
    p.add_argument("--output", default="storm")
    stack.add_env_option(p)
    return p.parse_args(argv)


async def storm(st: stack.Stack, n: int, concurrency: int) -> tuple[list[dict], list, float]:
    assert st.proxy_port is not None and st.manager_port is not None
    follower = httpraw.EventFollower(
        stack.HOST, st.manager_port, "/v1/events", st.manager_headers()
    )
    await follower.start()
    todo = list(range(n - 1, -1, -1))
    rows: list[dict] = []
    bodies = {
        m: json.dumps(
            {"model": m, "messages": [{"role": "user", "content": f"req for {m}"}], "max_tokens": 8}
        ).encode()
        for m in MODELS
    }

    async def worker() -> None:
        conn = httpraw.Connection(stack.HOST, st.proxy_port)
        try:
            while todo:
                i = todo.pop()
                model = MODELS[i % 2]
                row: dict = {"i": i, "model": model}
                t0 = time.monotonic_ns()
                try:
                    resp = await conn.request(
                        "POST", "/v1/chat/completions", bodies[model], st.client_headers(), 900
                    )
                except (OSError, httpraw.HttpError, TimeoutError) as exc:
                    row.update(
                        status=0,
                        error=f"{type(exc).__name__}: {exc}",
                        wait_ms=(time.monotonic_ns() - t0) / 1e6,
                    )
                    rows.append(row)
                    await conn.close()
                    continue
                row.update(status=resp.status, wait_ms=(resp.done_ns - t0) / 1e6)
                try:
                    data = json.loads(resp.body)
                except ValueError:
                    data = None
                if resp.status == 200:
                    row["answer_model"] = data.get("model") if isinstance(data, dict) else None
                    row["misrouted"] = row["answer_model"] != model
                else:
                    err = data.get("error", {}) if isinstance(data, dict) else {}
                    row.update(
                        error_code=err.get("code"),
                        error_source=err.get("source"),
                        error=str(err.get("message", resp.body[:200]))[:300],
                        retry_after=resp.headers.get("retry-after"),
                    )
                rows.append(row)
        finally:
            await conn.close()

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        wall = time.monotonic() - t0
        await asyncio.sleep(0.2)
        await follower.stop()
    return rows, follower.events, wall


def measure(args: argparse.Namespace) -> dict:
    ports = stack.free_ports(4)  # model A, model B, manager, proxy
    env: dict[str, str] = {}
    if args.batch_bound:
        env["HOMELAB_BATCH_BOUND"] = str(args.batch_bound)
    if args.queue_limit:
        env["HOMELAB_QUEUE_LIMIT"] = str(args.queue_limit)
    result: dict = {
        "benchmark": "storm",
        "machine": procstat.machine(),
        "settings": {
            "env": stack.parse_env(args.env),
            "requests": args.requests,
            "concurrency": args.concurrency,
            "runtime": args.runtime,
            "load_seconds": args.load_seconds,
            "manager_env": env,
            "pattern": "A,B,A,B,... (request i asks for model i mod 2)",
        },
    }
    with stack.Stack("storm", extra_env=stack.parse_env(args.env)) as st:
        if args.runtime == "docker":
            from bench.swap import IMAGE, ensure_image

            ensure_image()
            models = {
                name: stack.text_model(
                    name,
                    ports[i],
                    None,
                    image=IMAGE,
                    env={"FAKEVLLM_LOAD_SECONDS": str(args.load_seconds)},
                )
                for i, name in enumerate(MODELS)
            }
            st.write_models(models)
            stack._remove_containers(st.containers)
        else:
            models = {
                name: stack.text_model(
                    name,
                    ports[i],
                    st.upstream_command(name, ["--startup-delay", str(args.load_seconds)]),
                )
                for i, name in enumerate(MODELS)
            }
            st.write_models(models)
        st.start_manager(ports[2], args.runtime, st.workdir / "models.json", env)
        st.ensure(MODELS[0])
        st.start_proxy(ports[3])
        rows, events, wall = asyncio.run(storm(st, args.requests, args.concurrency))
    result["requests"] = sorted(rows, key=lambda r: r["i"])
    result["manager_events"] = [
        {"at_ns": at, "event": name, "data": data} for at, name, data in events
    ]
    result["summary"] = summarise(rows, events, wall)
    return result


def summarise(rows: list[dict], events: list, wall: float) -> dict:
    statuses = Counter(str(r["status"]) for r in rows)
    codes = Counter(
        f"{r['status']} {r.get('error_code')} ({r.get('error_source')})"
        for r in rows
        if r["status"] != 200
    )
    waits = [r["wait_ms"] for r in rows]
    per_model = {}
    for model in MODELS:
        mine = [r["wait_ms"] for r in rows if r["model"] == model and r["status"] == 200]
        per_model[model] = {
            "ok": len(mine),
            "p50_ms": percentile(mine, 50),
            "p95_ms": percentile(mine, 95),
            "p99_ms": percentile(mine, 99),
            "max_ms": max(mine) if mine else None,
        }
    swaps = [e for e in events if e[1] == "swap"]
    failed_states = [e for e in events if e[1] == "state" and '"failed"' in e[2]]
    return {
        "requests": len(rows),
        "ok": statuses.get("200", 0),
        "errors": len(rows) - statuses.get("200", 0),
        "by_status": dict(statuses),
        "errors_by_code": dict(codes),
        "misrouted": sum(1 for r in rows if r.get("misrouted")),
        "swaps": len(swaps),
        "failed_states": len(failed_states),
        "longest_wait_ms": max(waits) if waits else None,
        "p50_wait_ms": percentile(waits, 50),
        "p99_wait_ms": percentile(waits, 99),
        "wall_s": wall,
        "per_model": per_model,
    }


def render(result: dict) -> str:
    s = result["summary"]
    rows = [
        ["requests (ok / errors)", f"{s['requests']} ({s['ok']} / {s['errors']})"],
        [
            "errors by status, code (source)",
            ", ".join(f"{k}: {v}" for k, v in s["errors_by_code"].items()) or "none",
        ],
        ["answers from the wrong model", s["misrouted"]],
        ["swaps performed", s["swaps"]],
        ["longest wait ms", fmt(s["longest_wait_ms"], 1)],
        ["wait p50 / p99 ms", f"{fmt(s['p50_wait_ms'], 1)} / {fmt(s['p99_wait_ms'], 1)}"],
        ["wall time s", fmt(s["wall_s"], 2)],
    ]
    for model, f in s["per_model"].items():
        rows.append(
            [
                f"{model}: ok, p50 / p99 / max ms",
                f"{f['ok']}, {fmt(f['p50_ms'], 1)} / {fmt(f['p99_ms'], 1)} / {fmt(f['max_ms'], 1)}",
            ]
        )
    return table(["storm", "value"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    result["command"] = command_line("bench.storm", argv)
    path = write_json(args.output, result)
    write_csv(args.output, result["requests"])
    print(render(result))
    print(f"raw numbers: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
