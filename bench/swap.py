"""Swap overhead: "model B requested" to "B answers", minus what B's own server took to get ready.

    python -m bench.swap            # 6 swaps (A->B, B->A, ...) on the real Docker engine

Two text models of the test image ``homelab-ai/fakevllm:test`` (scripts/build-test-images.sh
builds it; this script runs that when the image is missing), each loading for
``--load-seconds`` like a real vLLM. The manager runs with the Docker runtime and the
proxy in front of it. Each swap: with A resident, the client sends B a chat request
through the proxy and times the answer.

Where the time went, on one wall clock (all parts run on this machine):

    request sent ─▶ A stopped ─▶ B container started ─▶ B's server ready ─▶ manager sees ready ─▶ answer
      stopping A      starting B        B's own load          readiness detection   lease + forward

- "A stopped": the manager's ``state`` event (A -> stopped) on ``GET /v1/events``,
  else Docker's ``destroy``/``die`` event for A's container.
- "B container started": the container's ``State.StartedAt`` (Docker), or for a standby
  container (started ahead behind its gate) the log timestamp of the gate's release line.
- "B's server ready": the Docker log timestamp of fakevllm's "Uvicorn running" line,
  printed once its socket listens.
- "manager sees ready": the manager's ``state`` event (B -> ready).

Overhead = total - B's own load. Writes bench/results/swap.json and .csv.

    python -m bench.swap --fit --output swap-fit

With ``--fit`` both models declare 10 MiB of a 20 MiB GPU budget (HOMELAB_GPU_BUDGET_MIB):
B loads beside A, nothing is stopped, and each round asks B while only A is resident
(B is stopped through the manager's API between rounds). Overhead is then what a start
costs beyond B's own load when no swap is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from bench import httpraw, procstat, stack
from bench.common import REPO, command_line, fmt, median, table, wall_ns, write_csv, write_json

IMAGE = "homelab-ai/fakevllm:test"
MODELS = ("swap-a", "swap-b")
READY_LINE = "Uvicorn running on"
GATE_LINE = "homelab-ai gate: released"  # manager.gate.RELEASED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--swaps", type=int, default=6)
    p.add_argument(
        "--load-seconds", type=float, default=2.0, help="FAKEVLLM_LOAD_SECONDS of both models"
    )
    p.add_argument("--settle", type=float, default=1.0, help="seconds of rest between swaps")
    p.add_argument("--output", default="swap")
    p.add_argument(
        "--fit",
        action="store_true",
        help="both models fit a GPU budget: B loads beside A (nothing stops)",
    )
    p.add_argument(
        "--image",
        default=IMAGE,
        help="the model image (default: the test image, built when missing; another tag "
        "must exist, e.g. one built privately so that a shared machine's rebuilds of the "
        "test image do not change it between runs)",
    )
    stack.add_env_option(p)
    return p.parse_args(argv)


def ensure_image() -> None:
    """Build the test image with scripts/build-test-images.sh when it is missing. Blocks."""
    import docker

    client = docker.from_env()
    try:
        client.images.get(IMAGE)
        return
    except docker.errors.ImageNotFound:
        pass
    finally:
        client.close()
    script = REPO / "scripts" / "build-test-images.sh"
    print(f"bench.swap: {IMAGE} is missing; running {script}", file=sys.stderr, flush=True)
    subprocess.run(["bash", str(script)], check=True)


def container_facts(name: str) -> dict:
    """StartedAt and the ready-line timestamp of a running container. Blocking (docker SDK)."""
    import docker

    client = docker.from_env()
    try:
        c = client.containers.get(name)
        started = wall_ns(c.attrs["State"]["StartedAt"])
        ready = None
        for line in c.logs(timestamps=True).decode(errors="replace").splitlines():
            stamp, _, text = line.partition(" ")
            if READY_LINE in text:
                ready = wall_ns(stamp)
            elif GATE_LINE in text:  # a standby container: its server started at the release
                started = wall_ns(stamp)
        return {"id": c.id[:12], "started_ns": started, "server_ready_ns": ready}
    finally:
        client.close()


def docker_events(since_ns: int, until_ns: int) -> list[dict]:
    """Container events of managed containers between two wall-clock times. Blocking."""
    import docker

    client = docker.from_env()
    try:
        stream = client.events(
            since=since_ns / 1e9,
            until=until_ns / 1e9 + 0.5,
            decode=True,
            filters={"type": "container", "label": "homelab-ai.managed=true"},
        )
        return [
            {
                "at_ns": int(e.get("timeNano", 0)),
                "action": e.get("Action") or e.get("status"),
                "name": e.get("Actor", {}).get("Attributes", {}).get("name"),
                "model": e.get("Actor", {}).get("Attributes", {}).get("homelab-ai.model"),
            }
            for e in stream
        ]
    finally:
        client.close()


def _state_at(
    follower: httpraw.EventFollower | None, model: str, state: str, after_ns: int
) -> int | None:
    if follower is None:
        return None
    for received, data in follower.named("state"):
        if data.get("model") == model and data.get("state") == state:
            at = wall_ns(data.get("at")) or received
            if at >= after_ns - 5_000_000:  # the manager's clock is ours; allow rounding
                return at
    return None


async def one_swap(
    st: stack.Stack, follower: httpraw.EventFollower | None, old: str, new: str, fit: bool = False
) -> dict:
    """One request for `new` while `old` is resident, timed by phase. `fit`: `new` loads
    beside `old` (nothing is stopped; "stopping A" is empty)."""
    body = json.dumps(
        {"model": new, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    ).encode()
    assert st.proxy_port is not None
    t_req = time.time_ns()
    resp = await httpraw.request_once(
        stack.HOST, st.proxy_port, "POST", "/v1/chat/completions", body, st.client_headers(), 300
    )
    t_ans = time.time_ns()
    row: dict = {"from": old, "to": new, "status": resp.status, "total_ms": (t_ans - t_req) / 1e6}
    if resp.status != 200:
        row["error"] = resp.body[:500].decode(errors="replace")
        return row
    new_c = st.models[new]["container"]
    old_c = st.models[old]["container"]
    facts = await asyncio.to_thread(container_facts, new_c)
    events = await asyncio.to_thread(docker_events, t_req, t_ans)
    row["docker_events"] = [{**e, "at_ms": (e["at_ns"] - t_req) / 1e6} for e in events]
    old_gone = next(
        (e["at_ns"] for e in events if e["name"] == old_c and e["action"] in ("destroy",)),
        next((e["at_ns"] for e in events if e["name"] == old_c and e["action"] == "die"), None),
    )
    t_old_stopped = t_req if fit else _state_at(follower, old, "stopped", t_req) or old_gone
    t_new_ready_mgr = _state_at(follower, new, "ready", t_req)
    t_started, t_srv_ready = facts["started_ns"], facts["server_ready_ns"]

    def span(a: int | None, b: int | None) -> float | None:
        return (b - a) / 1e6 if a is not None and b is not None else None

    row.update(
        stopping_old_ms=span(t_req, t_old_stopped),
        starting_new_ms=span(t_old_stopped, t_started),
        own_load_ms=span(t_started, t_srv_ready),
        readiness_detection_ms=span(t_srv_ready, t_new_ready_mgr),
        lease_and_forward_ms=span(t_new_ready_mgr, t_ans),
        ready_to_answer_ms=span(t_srv_ready, t_ans),
        manager_events=follower is not None and t_new_ready_mgr is not None,
    )
    own = row["own_load_ms"]
    row["overhead_ms"] = row["total_ms"] - own if own is not None else None
    return row


PHASES = (
    "total_ms",
    "own_load_ms",
    "overhead_ms",
    "stopping_old_ms",
    "starting_new_ms",
    "readiness_detection_ms",
    "lease_and_forward_ms",
    "ready_to_answer_ms",
)


def measure(args: argparse.Namespace) -> dict:
    ports = stack.free_ports(4)  # model A, model B, manager, proxy
    if args.image == IMAGE:
        ensure_image()
    result: dict = {
        "benchmark": "swap",
        "machine": procstat.machine(),
        "settings": {
            "env": stack.parse_env(args.env),
            "swaps": args.swaps,
            "load_seconds": args.load_seconds,
            "image": args.image,
            "runtime": "docker",
            "fit": args.fit,
        },
        "swaps": [],
    }
    with stack.Stack("swap", extra_env=stack.parse_env(args.env)) as st:
        env = {"FAKEVLLM_LOAD_SECONDS": str(args.load_seconds)}
        fit = {"gpu_memory_mib": 10} if args.fit else {}
        models = {
            name: stack.text_model(name, ports[i], None, image=args.image, env=env, **fit)
            for i, name in enumerate(MODELS)
        }
        st.write_models(models)
        stack._remove_containers(st.containers)  # leftovers of an interrupted run
        budget = {"HOMELAB_GPU_BUDGET_MIB": "20"} if args.fit else None
        st.start_manager(ports[2], "docker", st.workdir / "models.json", budget)
        st.ensure(MODELS[0])
        st.start_proxy(ports[3])

        async def go() -> None:
            follower: httpraw.EventFollower | None = httpraw.EventFollower(
                stack.HOST, ports[2], "/v1/events", st.manager_headers()
            )
            try:
                await follower.start()  # type: ignore[union-attr]
            except (httpraw.HttpError, OSError) as exc:
                print(
                    f"bench.swap: no manager events ({exc}); phases from Docker only",
                    file=sys.stderr,
                )
                follower = None
            try:
                current = MODELS[0]
                for i in range(args.swaps):
                    await asyncio.sleep(args.settle)
                    new = MODELS[1] if current == MODELS[0] else MODELS[0]
                    if args.fit:  # always B beside A: take B down first
                        current, new = MODELS[0], MODELS[1]
                        await httpraw.request_once(
                            stack.HOST,
                            ports[2],
                            "POST",
                            f"/v1/models/{new}/stop",
                            b"",
                            st.manager_headers(),
                            120,
                        )
                        await asyncio.sleep(args.settle)
                    row = await one_swap(st, follower, current, new, args.fit)
                    row["index"] = i
                    result["swaps"].append(row)
                    print(
                        f"  swap {i + 1}/{args.swaps} {current} -> {new}: total {row['total_ms']:.0f} ms, "
                        f"own load {fmt(row.get('own_load_ms'), 0)} ms, overhead {fmt(row.get('overhead_ms'), 0)} ms",
                        file=sys.stderr,
                        flush=True,
                    )
                    if row["status"] != 200:
                        print(f"  error: {row.get('error')}", file=sys.stderr)
                        break
                    current = new
            finally:
                if follower is not None:
                    await follower.stop()

        asyncio.run(go())
    ok = [r for r in result["swaps"] if r["status"] == 200]
    result["summary"] = {
        "swaps": len(result["swaps"]),
        "failed": len(result["swaps"]) - len(ok),
        **{f"{k}_median": median([r[k] for r in ok if r.get(k) is not None]) for k in PHASES},
        **{
            f"{k}_max": max((r[k] for r in ok if r.get(k) is not None), default=None)
            for k in PHASES
        },
    }
    return result


def render(result: dict) -> str:
    s = result["summary"]
    names = {
        "total_ms": "request sent -> answer (total)",
        "own_load_ms": "B's own start-to-ready (subtracted)",
        "overhead_ms": "swap overhead (total - own)",
        "stopping_old_ms": "  stopping A",
        "starting_new_ms": "  starting B (A stopped -> B container running)",
        "readiness_detection_ms": "  readiness detection (B listening -> manager says ready)",
        "lease_and_forward_ms": "  lease grant + forward + answer",
        "ready_to_answer_ms": "  (B listening -> answer)",
    }
    rows = [[names[k], fmt(s[f"{k}_median"], 1), fmt(s[f"{k}_max"], 1)] for k in PHASES]
    return (
        table(["phase", "median ms", "max ms"], rows)
        + f"\n{s['swaps']} swaps, {s['failed']} failed"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    result["command"] = command_line("bench.swap", argv)
    path = write_json(args.output, result)
    write_csv(
        args.output,
        [{k: v for k, v in r.items() if not isinstance(v, list)} for r in result["swaps"]],
    )
    print(render(result))
    print(f"raw numbers: {path}")
    return 0 if result["summary"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
