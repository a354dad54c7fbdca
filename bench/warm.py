"""The warm tier on a GPU: swap to first token, cold, warm (sleep level 1 and 2) and resident.

    python -m bench.warm                      # a small text model and an image model
    python -m bench.warm --text-model Qwen/Qwen2.5-1.5B-Instruct --image-model stabilityai/sdxl-turbo
    python -m bench.warm --skip-text --image-quantize bnb-nf4 --output warm-nf4   # a quantized pipeline parked

Needs a CUDA GPU (NVML answers, and torch sees it): vLLM's CPU build has no sleep mode, so
on a machine without one this refuses at once, saying so (exit 2). No Docker: the servers
are launched the way the manager's process runtime launches them (`manager.launch`:
vLLM with ``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``, the image server with
its ``HOMELAB_IMAGE_*`` variables), and put to sleep and woken with the manager's own
`manager.warm.HttpWarmControl`; readiness is the manager's `HttpReadinessProbe`. So the
figures are the mechanism's, without the scheduler's few milliseconds.

For each model, `--rounds` times each:

- **cold**: the server launched from nothing, to the first token (text: the first
  streamed content chunk of a chat; image: the first picture at `--image-steps`);
- **resident**: the server ready, to the first token;
- **warm L1** (text): ``POST /sleep?level=1``, then a wake (``/wake_up``) and the first
  token; **warm L2**: the same at level 2 (``/wake_up?tags=weights``,
  ``/collective_rpc reload_weights``, ``/wake_up?tags=kv_cache``);
- **warm (parked)** (image): ``POST /park``, then ``/unpark`` and the first picture.

Beside each: the GPU's used memory (NVML) and the server's resident host memory (its
process group) before the move and after it, and the sleep's own duration. Writes
bench/results/warm.json and .csv; record the figures, with the card, in docs/benchmarks.md.
Ports 18680-18689.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import command_line, fmt, median, table, write_csv, write_json
from wire.image_options import QUANTIZE

TEXT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
IMAGE_MODEL = "stabilityai/sd-turbo"
PORTS = (18680, 18681)
CASES_TEXT = ("cold", "resident", "warm L1", "warm L2")
CASES_IMAGE = ("cold", "resident", "warm (parked)")


class NoGpu(SystemExit):
    """This machine has no CUDA GPU: the bench cannot run (exit 2, with the reason)."""

    def __init__(self, why: str) -> None:
        super().__init__(2)
        self.why = why


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.warm", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--text-model", default=TEXT_MODEL, help="a vLLM model (Hugging Face id or folder)"
    )
    p.add_argument("--image-model", default=IMAGE_MODEL, help="a diffusers model (id or folder)")
    p.add_argument("--skip-text", action="store_true", help="measure the image model only")
    p.add_argument("--skip-image", action="store_true", help="measure the text model only")
    p.add_argument("--rounds", type=int, default=3, help="times each case is measured")
    p.add_argument(
        "--text-gpu-memory-mib",
        type=int,
        default=None,
        help="the text model's gpu_memory_mib (its vLLM --gpu-memory-utilization share); "
        "default: vLLM's own 0.9 of the card",
    )
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument(
        "--image-quantize",
        default="none",
        choices=[q for q in QUANTIZE if q != "gguf"],
        help="load the image model's transformer/UNet quantized (models.json `quantize`): "
        "how parking a quantized pipeline compares",
    )
    p.add_argument("--image-steps", type=int, default=1, help="steps of the timed picture")
    p.add_argument("--image-size", default="512x512")
    p.add_argument("--vllm-python", default=sys.executable, help="the Python that has vLLM")
    p.add_argument(
        "--imageserver-python", default=sys.executable, help="the Python that has diffusers"
    )
    p.add_argument("--start-timeout", type=float, default=1200.0)
    p.add_argument("--output", default="warm")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.skip_text and args.skip_image:
        p.error("--skip-text and --skip-image leave nothing to measure")
    w, _, h = args.image_size.partition("x")
    if not (w.isdigit() and h.isdigit() and int(w) % 8 == 0 and int(h) % 8 == 0):
        p.error(f"--image-size {args.image_size!r} is not WIDTHxHEIGHT in multiples of 8")
    return args


def require_cuda() -> int:
    """The card's memory in MiB; raises NoGpu with the reason when there is no CUDA GPU."""
    try:
        from manager.gpu import card_total_mib
    except ImportError as exc:
        raise NoGpu(f"NVML cannot be loaded ({exc})") from exc
    total = card_total_mib()
    if total is None:
        raise NoGpu("NVML sees no NVIDIA GPU")
    return total


def card_name() -> str:
    """The first GPU's name from NVML ("unknown GPU" when it cannot say)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    except Exception:  # NVML errors: only a label
        return "unknown GPU"
    return name.decode() if isinstance(name, bytes) else str(name)


def specs(args: argparse.Namespace) -> dict[str, Any]:
    """The models.json entries measured (`manager.spec` types), by name."""
    from manager.spec import ImageModel, TextModel

    out: dict[str, Any] = {}
    if not args.skip_text:
        extra = ["--max-model-len", str(args.max_model_len)]
        out["bench-text"] = TextModel(
            type="text",
            container="bench-warm-text",
            port=PORTS[0],
            image="vllm/vllm-openai:v0.32.0",
            model=args.text_model,
            command=[args.vllm_python, "-m", "vllm.entrypoints.openai.api_server"],
            args=extra,
            gpu_memory_mib=args.text_gpu_memory_mib,
            start_timeout=args.start_timeout,
            warm={"level": 1},
        )
    if not args.skip_image:
        out["bench-image"] = ImageModel(
            type="image",
            container="bench-warm-image",
            port=PORTS[1],
            image="homelab-ai/imageserver:bench",
            model=args.image_model,
            command=[args.imageserver_python, "-m", "imageserver"],
            sizes=[args.image_size],
            steps=args.image_steps,
            dtype="fp16",
            quantize=args.image_quantize,
            start_timeout=args.start_timeout,
            warm={"level": 1},
        )
    return out


async def first_token(base_url: str, key: str | None, spec: Any, args: argparse.Namespace) -> None:
    """One request; returns at its first token (text) or its picture (image)."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600) as client:
        if spec.type == "image":
            reply = await client.post(
                "/v1/images/generations",
                json={"prompt": "a lighthouse", "size": args.image_size, "steps": args.image_steps},
            )
            reply.raise_for_status()
            return
        body = {
            "model": "bench-text",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "stream": True,
        }
        async with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            stream.raise_for_status()
            async for line in stream.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    return
        raise RuntimeError("the stream ended without a token")


async def measure_model(
    name: str, spec: Any, args: argparse.Namespace, log_dir: Path
) -> list[dict]:
    """Every case of one model, `args.rounds` times each. The server is stopped at the end."""
    from manager.gpu import used_mib
    from manager.health import HttpReadinessProbe
    from manager.process_runtime import ProcessRuntime
    from manager.settings import ManagerSettings
    from manager.warm import HttpWarmControl

    settings = ManagerSettings(
        manager_token=secrets.token_urlsafe(32), runtime="process", log_dir=log_dir
    )
    runtime, probe, warm = ProcessRuntime(settings), HttpReadinessProbe(), HttpWarmControl()
    base_url = runtime.base_url(spec)
    rows: list[dict] = []

    async def key() -> str | None:
        inst = await runtime.inspect(name, spec)
        return inst.api_key if inst else None

    async def timed(case: str, move: Callable[[], Awaitable[None]], before_sleep: bool) -> None:
        gpu_before, host_before = await used_mib(), await runtime.host_memory_mib(name, spec)
        slept = None
        if before_sleep:
            began = time.perf_counter()
            await warm.sleep(spec_for(case), base_url, await key())
            slept = time.perf_counter() - began
        gpu_mid, host_mid = await used_mib(), await runtime.host_memory_mib(name, spec)
        began = time.perf_counter()
        await move()
        await first_token(base_url, await key(), spec, args)
        took = time.perf_counter() - began
        rows.append(
            {
                "model": name,
                "case": case,
                "seconds_to_first_token": took,
                "sleep_seconds": slept,
                "gpu_mib_before": gpu_before,
                "gpu_mib_asleep": gpu_mid if before_sleep else None,
                "gpu_mib_after": await used_mib(),
                "host_mib_before": host_before,
                "host_mib_asleep": host_mid if before_sleep else None,
                "host_mib_after": await runtime.host_memory_mib(name, spec),
            }
        )
        print(f"  {name} {case}: {took:.2f} s to the first token", flush=True)

    def spec_for(case: str) -> Any:
        level = 2 if case == "warm L2" else 1
        return spec.model_copy(update={"warm": spec.warm.model_copy(update={"level": level})})

    async def cold() -> None:
        await runtime.start(name, spec)
        await probe.wait_ready(name, spec, runtime)

    async def nothing() -> None:
        return None

    try:
        for _ in range(args.rounds):
            await runtime.stop(name, spec, 30)
            await timed("cold", cold, before_sleep=False)
            await timed("resident", nothing, before_sleep=False)
            cases = ("warm L1", "warm L2") if spec.type == "text" else ("warm (parked)",)
            for case in cases:
                wake_spec = spec_for(case)

                async def wake(s: Any = wake_spec) -> None:
                    await warm.wake(s, base_url, await key())

                await timed(case, wake, before_sleep=True)
    finally:
        await runtime.stop(name, spec, 30)
        await warm.aclose()
        await probe.aclose()
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per model and case: the median seconds to the first token, how many times faster
    than the model's cold start that is (`cold_over_this`), and the last round's memory."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        cases: dict[str, list[dict]] = {}
        for r in rows:
            if r["model"] == model:
                cases.setdefault(r["case"], []).append(r)
        medians = {
            c: median([r["seconds_to_first_token"] for r in mine]) for c, mine in cases.items()
        }
        cold = medians.get("cold")
        for case, mine in cases.items():
            out.append(
                {
                    "model": model,
                    "case": case,
                    "median_s": medians[case],
                    "cold_over_this": cold / medians[case] if cold and medians[case] else None,
                    "rounds": len(mine),
                    "gpu_mib_asleep": mine[-1]["gpu_mib_asleep"],
                    "gpu_mib_after": mine[-1]["gpu_mib_after"],
                    "host_mib_asleep": mine[-1]["host_mib_asleep"],
                }
            )
    return out


def render(result: dict) -> str:
    rows = [
        [
            s["model"],
            s["case"],
            fmt(s["median_s"]),
            "-" if s.get("cold_over_this") is None else f"{s['cold_over_this']:.1f}x",
            s["gpu_mib_asleep"] or "-",
            s["gpu_mib_after"] or "-",
            s["host_mib_asleep"] or "-",
            s["rounds"],
        ]
        for s in result["summary"]
    ]
    headers = [
        "model",
        "case",
        "to first token s",
        "cold / this",
        "GPU MiB asleep",
        "GPU MiB after",
        "host MiB asleep",
        "n",
    ]
    return f"{result['card']}\n\n" + table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        card_mib = require_cuda()
    except NoGpu as exc:
        print(
            f"bench.warm needs a CUDA GPU and cannot run here: {exc.why}. vLLM's CPU build "
            "has no sleep mode; the warm tier's logic is tested on the CPU by the test "
            "suite (tests/unit/manager/test_manager_warm.py and the integration tier).",
            file=sys.stderr,
        )
        return 2
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        for name, spec in specs(args).items():
            print(f"{name}: {spec.model}", flush=True)
            rows += asyncio.run(measure_model(name, spec, args, Path(tmp)))
    result = {
        "command": command_line("bench.warm", argv),
        "card": f"{card_name()} ({card_mib} MiB)",
        "rows": rows,
        "summary": summary(rows),
    }
    write_json(args.output, result)
    write_csv(args.output, rows)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
