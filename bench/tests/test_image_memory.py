"""bench.image_memory's arguments and option matrix, and its refusal without a GPU (the
measurement itself needs CUDA: it runs where a GPU is lent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import image_memory
from imageserver.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_matrix_starts_with_the_baseline_and_adds_gguf_only_with_a_file() -> None:
    plain = image_memory.matrix(None)
    assert plain[0] == {}
    assert not any(s.get("quantize") == "gguf" for s in plain)
    with_gguf = image_memory.matrix("/m/x-Q4_0.gguf")
    assert [s for s in with_gguf if s.get("quantize") == "gguf"]
    assert len({image_memory.label(s) for s in with_gguf}) == len(with_gguf)


def test_every_option_set_is_one_the_image_server_accepts_on_cuda() -> None:
    for options in image_memory.matrix("/m/x-Q4_0.gguf"):
        gguf = "/m/x-Q4_0.gguf" if options.get("quantize") == "gguf" else ""
        Settings(model="m", device="cuda", gguf_file=gguf, **options)  # raises if refused


def test_only_parses_option_sets_and_refuses_others(capsys: pytest.CaptureFixture[str]) -> None:
    args = image_memory.parse_args(
        ["--model", "m", "--only", "quantize=bnb-nf4,offload=model", "--only", ""]
    )
    assert args.sets == [{"quantize": "bnb-nf4", "offload": "model"}, {}]
    for bad in (["--only", "quantize"], ["--only", "colour=red"], ["--only", "quantize=gguf"]):
        with pytest.raises(SystemExit) as caught:
            image_memory.parse_args(["--model", "m", *bad])
        assert caught.value.code == 2
    assert "needs --gguf-file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        image_memory.parse_args(["--model", "m", "--size", "big"])


def test_dry_run_prints_the_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    assert image_memory.main(["--model", "m", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "bf16, all on the GPU"
    assert "quantize=bnb-nf4, text_encoder_quantize=bnb-nf4, offload=model" in lines


def test_without_cuda_it_refuses_clearly() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "bench.image_memory", "--model", "m"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr
    assert not list((ROOT / "bench" / "results").glob("image-memory-m.json"))


def test_tiny_needs_no_model_runs_the_whole_matrix_with_gguf_at_64x64() -> None:
    args = image_memory.parse_args(["--tiny"])
    assert (args.model, args.size) == (None, "64x64")
    assert args.sets == image_memory.matrix(image_memory.TINY_GGUF)
    assert [s for s in args.sets if s.get("quantize") == "gguf"]
    assert image_memory.parse_args(["--tiny", "--size", "128x128"]).size == "128x128"
    for bad in (["--tiny", "--model", "m"], ["--tiny", "--gguf-file", "/x-Q4_0.gguf"], []):
        with pytest.raises(SystemExit) as caught:
            image_memory.parse_args(bad)
        assert caught.value.code == 2


def test_the_park_column_says_what_parking_did() -> None:
    assert image_memory.parked({"refused": "offload 'model' cannot be parked"}) == "refused"
    assert image_memory.parked({"error": "ValueError: no"}) == "failed"
    assert image_memory.parked({"allocated_parked_mib": 3, "park_s": 0.2}) == "3"
    row = image_memory.table(
        [
            {
                "label": "bf16, all on the GPU",
                "load_s": 1.0,
                "s_per_image": 2.0,
                "torch_peak_allocated_mib": 900,
                "nvml_used_at_end_mib": 1200,
                "park": {"allocated_parked_mib": 12},
            }
        ]
    ).splitlines()[1]
    assert row.split()[-1] == "12"
