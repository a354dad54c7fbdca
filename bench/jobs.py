"""Jobs vs interactive: the same 200 requests over two models, side by side in one run.

    python -m bench.jobs                  # 200 requests, A/B/A/B..., process runtime
    python -m bench.jobs --requests 400

Both phases run against one stack (the stand-in model server, the real manager and
proxy), each starting with model A resident:

- *interactive*: all requests sent at once as ``POST /v1/chat/completions`` (one
  connection each), so both models always have waiters and the manager's fairness
  rule (``HOMELAB_BATCH_BOUND``) decides how often it swaps;
- *jobs*: the same bodies as one OpenAI batch (``POST /v1/files`` + ``POST
  /v1/batches``), i.e. all submitted at once; the proxy's dispatcher drains them
  grouped by model (docs/jobs.md, "Order"). Timed from the upload to the batch
  reading ``completed``.

Counts per phase: swaps (the manager's ``swap`` events on ``GET /v1/events`` during
the phase), total time, errors. Writes bench/results/jobs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx

from bench import httpraw, procstat, stack
from bench.common import command_line, fmt, ratio, table, write_json
from bench.storm import MODELS as STORM_MODELS
from bench.storm import storm

MODELS = STORM_MODELS  # storm() asks for these names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument(
        "--load-seconds", type=float, default=0.5, help="each model server's start-up time"
    )
    p.add_argument("--output", default="jobs")
    stack.add_env_option(p)
    return p.parse_args(argv)


def _body(i: int) -> dict:
    model = MODELS[i % 2]
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"req for {model}"}],
        "max_tokens": 8,
    }


async def run_batch(st: stack.Stack, n: int) -> tuple[dict, list, float]:
    """Submit `n` requests as one batch; wait until it ends. Returns (batch, events, wall s)."""
    assert st.proxy_port is not None and st.manager_port is not None
    follower = httpraw.EventFollower(
        stack.HOST, st.manager_port, "/v1/events", st.manager_headers()
    )
    await follower.start()
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": _body(i),
            }
        )
        + "\n"
        for i in range(n)
    ).encode()
    base = f"http://{stack.HOST}:{st.proxy_port}"
    async with httpx.AsyncClient(base_url=base, headers=st.client_headers(), timeout=120) as client:
        t0 = time.monotonic()
        try:
            upload = await client.post(
                "/v1/files", files={"file": ("bench.jsonl", lines)}, data={"purpose": "batch"}
            )
            upload.raise_for_status()
            created = await client.post(
                "/v1/batches",
                json={
                    "input_file_id": upload.json()["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            )
            created.raise_for_status()
            batch = created.json()
            while batch["status"] not in ("completed", "failed", "cancelled", "expired"):
                await asyncio.sleep(0.05)
                batch = (await client.get(f"/v1/batches/{batch['id']}")).json()
            wall = time.monotonic() - t0
            output = await client.get(f"/v1/files/{batch['output_file_id']}/content")
            batch["output_lines"] = len(output.text.splitlines())
        finally:
            await asyncio.sleep(0.2)
            await follower.stop()
    return batch, follower.events, wall


def measure(args: argparse.Namespace) -> dict:
    ports = stack.free_ports(4)  # model A, model B, manager, proxy
    env_extra = stack.parse_env(args.env)
    result: dict = {
        "benchmark": "jobs",
        "machine": procstat.machine(),
        "settings": {
            "env": env_extra,
            "requests": args.requests,
            "load_seconds": args.load_seconds,
            "pattern": "A,B,A,B,... (request i asks for model i mod 2)",
        },
    }
    with stack.Stack("jobs", extra_env=env_extra) as st:
        models = {
            name: stack.text_model(
                name,
                ports[i],
                st.upstream_command(name, ["--startup-delay", str(args.load_seconds)]),
            )
            for i, name in enumerate(MODELS)
        }
        st.write_models(models)
        # Room in the manager's queue for every request at once (the default is 64):
        # the interactive phase would otherwise measure 429s, not swaps.
        manager_env = {"HOMELAB_QUEUE_LIMIT": str(2 * args.requests)}
        result["settings"]["manager_env"] = manager_env
        st.start_manager(ports[2], "process", st.workdir / "models.json", manager_env)
        st.start_proxy(ports[3])

        st.ensure(MODELS[0])
        rows, events, wall = asyncio.run(storm(st, args.requests, args.requests))
        interactive = {
            "ok": sum(1 for r in rows if r["status"] == 200),
            "errors": sum(1 for r in rows if r["status"] != 200),
            "swaps": sum(1 for e in events if e[1] == "swap"),
            "wall_s": wall,
            "errors_sample": [r.get("error") for r in rows if r["status"] != 200][:3],
        }

        st.ensure(MODELS[0])
        batch, events, wall = asyncio.run(run_batch(st, args.requests))
        counts = batch["request_counts"]
        jobs = {
            "ok": counts["completed"],
            "errors": counts["failed"] + (counts["total"] - counts["completed"] - counts["failed"]),
            "swaps": sum(1 for e in events if e[1] == "swap"),
            "wall_s": wall,
            "status": batch["status"],
            "output_lines": batch["output_lines"],
        }
    result["summary"] = {
        "interactive": interactive,
        "jobs": jobs,
        "swap_ratio": ratio(jobs["swaps"], interactive["swaps"]),
        "time_ratio": ratio(jobs["wall_s"], interactive["wall_s"]),
    }
    return result


def render(result: dict) -> str:
    s = result["summary"]
    rows = [
        [
            name,
            f"{p['ok']} / {p['errors']}",
            p["swaps"],
            fmt(p["wall_s"], 2),
        ]
        for name, p in (
            ("interactive (all at once)", s["interactive"]),
            ("jobs (one batch)", s["jobs"]),
        )
    ]
    rows.append(["jobs / interactive", "", fmt(s["swap_ratio"], 3), fmt(s["time_ratio"], 3)])
    return table(["", "ok / errors", "swaps", "total s"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    result["command"] = command_line("bench.jobs", argv)
    path = write_json(args.output, result)
    print(render(result))
    print(f"raw numbers: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
