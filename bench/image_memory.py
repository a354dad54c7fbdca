"""GPU memory and time of an image model under each loading option (a GPU check).

    python -m bench.image_memory --model black-forest-labs/FLUX.1-schnell --steps 4
    python -m bench.image_memory --model Qwen/Qwen-Image-Edit --steps 20 \\
        --gguf-file https://huggingface.co/QuantStack/Qwen-Image-Edit-GGUF/blob/main/Qwen_Image_Edit-Q4_0.gguf
    python -m bench.image_memory --model M --only "quantize=bnb-nf4,offload=model" --dry-run
    python -m bench.image_memory --tiny

For each option set of the matrix (`matrix`: unquantized; the denoiser in bnb-nf4,
torchao-int8/int4, quanto-int8 and, given `--gguf-file`, GGUF; the text encoders
quantized too; model, sequential and group offloading; VAE tiling), a fresh child
process loads the pipeline with the image server's own loading code
(``imageserver.diffusers_model.load_diffusers_model``, warm-up off), makes one picture
of `--size` in `--steps` steps, and reports: load seconds, seconds per image, torch's
peak allocated and reserved memory, and NVML's used memory on the GPU before the load,
after it and at the end (the process's whole footprint, CUDA context included). One
child per option, so each starts from an empty GPU; a child that fails (out of memory,
a missing package) is recorded with its reason and the next one runs.

Each child then checks the warm tier's parking (``imageserver.park.move``, what
``POST /park`` and ``/unpark`` do): where `wire.image_options.park_problem` allows it,
the pipeline moves to the CPU and back, and the record's ``park`` has the seconds of
each move, torch's allocated memory and NVML's used memory while parked, and how far
the picture made after the return differs from the first (the largest pixel
difference, same seed); an offloaded pipeline records the refusal instead, and a move
that fails (bitsandbytes, say) its reason.

`--tiny` needs no network (a lent GPU machine has none): it builds the tests' tiny
pipeline (``imageserver.tiny``) and a GGUF file of its UNet, and runs the whole matrix at
64x64. Its figures say nothing about real models; it checks that every option, the
CUDA-only ones included (bnb-nf4, torchao-int4, sequential offload, group offload with
CUDA streams), loads, generates and parks on a real GPU.

Results: `--output` (default bench/results/image-memory-<model>.json), one record per
option set, and a table on stdout. Needs a CUDA GPU: without one it exits 2 saying so
(`--dry-run` prints the matrix and exits 0 anywhere). The figures are what
docs/image-models.md's table should be checked against, and what the manager's
footprint table (manager/image_footprints.py) estimates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KEYS = ("quantize", "text_encoder_quantize", "offload", "vae_tiling")
"""The options a matrix entry may set (the image server's settings of the same names)."""
TINY_GGUF = "unet-Q8_0.gguf"
"""The GGUF file `--tiny` writes beside its pipeline."""


def matrix(gguf_file: str | None) -> list[dict[str, str]]:
    """The option sets measured, in order: the baseline first."""
    sets: list[dict[str, str]] = [
        {},
        {"vae_tiling": "true"},
        {"offload": "model"},
        {"offload": "sequential"},
        {"offload": "group-block"},
        {"offload": "group-leaf"},
        {"quantize": "bnb-nf4"},
        {"quantize": "bnb-nf4", "text_encoder_quantize": "bnb-nf4"},
        {"quantize": "bnb-nf4", "text_encoder_quantize": "bnb-nf4", "offload": "model"},
        {"quantize": "torchao-int8"},
        {"quantize": "torchao-int8", "text_encoder_quantize": "torchao-int8"},
        {"quantize": "torchao-int4"},
        {"quantize": "quanto-int8"},
        {"quantize": "quanto-int8", "text_encoder_quantize": "quanto-int8"},
    ]
    if gguf_file:
        sets += [
            {"quantize": "gguf"},
            {"quantize": "gguf", "text_encoder_quantize": "bnb-nf4", "offload": "model"},
            {"quantize": "gguf", "offload": "group-leaf"},
        ]
    return sets


def parse_only(text: str) -> dict[str, str]:
    """'quantize=bnb-nf4,offload=model' -> one option set. Raises ValueError."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in KEYS or not value:
            raise ValueError(f"{part!r} is not KEY=VALUE with KEY one of {', '.join(KEYS)}")
        out[key] = value
    return out


def label(options: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "bf16, all on the GPU"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.image_memory", description=__doc__.splitlines()[0]
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="Hugging Face id or diffusers folder")
    which.add_argument(
        "--tiny",
        action="store_true",
        help="the tests' tiny pipeline and a GGUF of its UNet, built here (no network)",
    )
    parser.add_argument("--gguf-file", help="the transformer/UNet as GGUF (adds GGUF entries)")
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--size", help="WIDTHxHEIGHT (default 1024x1024; 64x64 with --tiny)")
    parser.add_argument("--steps", type=int, default=20, help="inference steps (default 20)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="measure only this option set (repeatable), e.g. quantize=gguf,offload=model",
    )
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/...)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per option set")
    parser.add_argument("--dry-run", action="store_true", help="print the matrix and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny and args.gguf_file:
        parser.error("--tiny writes its own GGUF file; --gguf-file is for --model")
    args.size = args.size or ("64x64" if args.tiny else "1024x1024")
    if not re.fullmatch(r"[1-9][0-9]{1,4}x[1-9][0-9]{1,4}", args.size):
        parser.error(f"--size {args.size!r} is not WIDTHxHEIGHT")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    try:
        gguf = args.gguf_file or (TINY_GGUF if args.tiny else None)
        args.sets = [parse_only(t) for t in args.only] if args.only else matrix(gguf)
    except ValueError as exc:
        parser.error(str(exc))
    gguf_wanted = any(s.get("quantize") == "gguf" for s in args.sets)
    if gguf_wanted and not (args.gguf_file or args.tiny):
        parser.error("quantize=gguf needs --gguf-file")
    return args


def cuda_problem() -> str | None:
    """Why this machine cannot run the check (None: it can)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return (
            f"this check needs a CUDA GPU, and torch {torch.__version__} sees none "
            "(torch.cuda.is_available() is False); --dry-run prints the matrix"
        )
    return None


def _nvml_used_mib() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return int(info.used) // (1024 * 1024)
    except Exception:
        return None


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Child: load with `spec`'s options, make one picture, return the figures."""
    import torch

    from imageserver.diffusers_model import load_diffusers_model
    from imageserver.settings import Settings

    width, height = (int(x) for x in spec["size"].split("x"))
    settings = Settings(
        model=spec["model"],
        served_name="bench",
        device="cuda",
        dtype=spec["dtype"],
        sizes=[spec["size"]],
        warmup_steps=0,
        gguf_file=(spec.get("gguf_file") or "")
        if spec["options"].get("quantize") == "gguf"
        else "",
        **spec["options"],
    )
    before = _nvml_used_mib()
    started = time.monotonic()
    model = load_diffusers_model(settings)
    torch.cuda.synchronize()
    load_s = time.monotonic() - started
    after_load = _nvml_used_mib()
    allocated_after_load = torch.cuda.memory_allocated() // 2**20
    torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    _picture(model, width, height, spec["steps"])
    torch.cuda.synchronize()
    image_s = time.monotonic() - started
    figures = {
        "load_s": round(load_s, 2),
        "s_per_image": round(image_s, 2),
        "torch_allocated_after_load_mib": allocated_after_load,
        "torch_peak_allocated_mib": torch.cuda.max_memory_allocated() // 2**20,
        "torch_peak_reserved_mib": torch.cuda.max_memory_reserved() // 2**20,
        "nvml_used_before_mib": before,
        "nvml_used_after_load_mib": after_load,
        "nvml_used_at_end_mib": _nvml_used_mib(),
        "loaded": model.loaded.model_dump() if model.loaded else None,
    }
    figures["park"] = park_check(
        model, settings, lambda: _picture(model, width, height, spec["steps"])
    )
    return figures


def _picture(model: Any, width: int, height: int, steps: int) -> Any:
    """One picture (seed 0): generated, or an edit of a flat image for an edit-only model."""
    from PIL import Image

    from imageserver.model import EditJob, GenerateJob

    if model.capabilities.generate:
        job = GenerateJob(
            prompt="a lighthouse at dusk", n=1, width=width, height=height, steps=steps, seed=0
        )
        return model.generate(job)[0]
    flat = Image.new("RGB", (width, height), (90, 120, 200))
    edit = EditJob(
        prompt="make the sky purple",
        image=flat,
        n=1,
        width=width,
        height=height,
        steps=steps,
        seed=0,
    )
    return model.edit(edit)[0]


def park_check(model: Any, settings: Any, picture: Any) -> dict[str, Any]:
    """Park the loaded model on the CPU and bring it back as the image server does; the
    figures of each move, or why it cannot park. Child only (CUDA)."""
    import numpy as np
    import torch

    from imageserver.park import move
    from wire.image_options import park_problem

    refused = park_problem(settings.load_offload)
    if refused is not None:
        return {"refused": refused}
    first = np.asarray(picture(), dtype=np.int16)
    out: dict[str, Any] = {"allocated_before_mib": torch.cuda.memory_allocated() // 2**20}
    try:
        started = time.monotonic()
        move(model, "cpu")
        torch.cuda.synchronize()
        out["park_s"] = round(time.monotonic() - started, 2)
        out["allocated_parked_mib"] = torch.cuda.memory_allocated() // 2**20
        out["nvml_used_parked_mib"] = _nvml_used_mib()
        started = time.monotonic()
        move(model, "cuda")
        torch.cuda.synchronize()
        out["unpark_s"] = round(time.monotonic() - started, 2)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        out["error"] = f"{type(exc).__name__}: {lines[0] if lines else ''}"
        return out
    again = np.asarray(picture(), dtype=np.int16)
    out["max_pixel_difference"] = int(np.abs(again - first).max())
    return out


def run_one(args: argparse.Namespace, options: dict[str, str]) -> dict[str, Any]:
    spec = {
        "model": args.model,
        "gguf_file": args.gguf_file,
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "options": options,
    }
    record: dict[str, Any] = {"options": options, "label": label(options)}
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.image_memory",
                "--model",
                args.model,
                "--child",
                json.dumps(spec),
            ],
            capture_output=True,
            text=True,
            timeout=args.timeout,
            env=env,
            cwd=ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {**record, "error": f"timed out after {args.timeout:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {**record, "error": " | ".join(tail) or f"exit {done.returncode}"}
    return {**record, **json.loads(lines[-1][len("RESULT ") :])}


def build_tiny() -> tuple[str, str]:
    """The tiny pipeline and its UNet as GGUF, in a temporary folder (kept for the children).
    Blocks a few seconds."""
    import tempfile

    from imageserver.tiny import build, denoiser_gguf

    folder = Path(tempfile.mkdtemp(prefix="image-memory-tiny-"))
    pipeline = build(folder / "pipeline")
    return str(pipeline), str(denoiser_gguf(pipeline, folder / TINY_GGUF))


def table(records: list[dict[str, Any]]) -> str:
    head = (
        f"{'options':<62} {'load s':>7} {'s/img':>7} {'peak alloc':>10} {'NVML end':>9} "
        f"{'parked':>7}"
    )
    rows = [head]
    for r in records:
        if "error" in r:
            rows.append(f"{r['label']:<62} failed: {r['error'][:80]}")
        else:
            rows.append(
                f"{r['label']:<62} {r['load_s']:>7} {r['s_per_image']:>7} "
                f"{r['torch_peak_allocated_mib']:>10} {r['nvml_used_at_end_mib'] or '-':>9} "
                f"{parked(r.get('park') or {}):>7}"
            )
    return "\n".join(rows)


def parked(park: dict[str, Any]) -> str:
    """The park column: torch's MiB allocated while parked, 'refused' or 'failed'."""
    if "refused" in park:
        return "refused"
    if "error" in park:
        return "failed"
    return str(park.get("allocated_parked_mib", "-"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure(json.loads(args.child))), flush=True)
        return 0
    if args.dry_run:
        for options in args.sets:
            print(label(options))
        return 0
    problem = cuda_problem()
    if problem:
        print(f"bench.image_memory: {problem}", file=sys.stderr)
        return 2
    import torch

    if args.tiny:
        args.model, args.gguf_file = build_tiny()
    records = []
    for options in args.sets:
        print(f"-- {label(options)}", flush=True)
        records.append(run_one(args, options))
    name = "tiny" if args.tiny else args.model.rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-")
    out = args.output or RESULTS / f"image-memory-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "tiny (imageserver.tiny: code paths only)" if args.tiny else args.model,
        "gguf_file": None if args.tiny else args.gguf_file,
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "gpu": torch.cuda.get_device_name(0),
        "gpu_total_mib": torch.cuda.get_device_properties(0).total_memory // 2**20,
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.write_text(json.dumps({"meta": meta, "results": records}, indent=2) + "\n")
    print(table(records))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
