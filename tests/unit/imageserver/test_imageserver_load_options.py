"""The loading options as the image server reads them (HOMELAB_IMAGE_*): parsed, refused at
start-up with the model named when they cannot work, and what /health says once loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from imageserver.settings import Settings
from wire.image_options import ImageLoaded, gguf_type
from wire.model_server import ImageHealth

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    for key in [k for k in os.environ if k.startswith("HOMELAB_IMAGE_")]:
        monkeypatch.delenv(key)

    def set_env(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(f"HOMELAB_IMAGE_{key.upper()}", value)

    return set_env


def test_the_loading_variables_are_read(env) -> None:
    env(
        model="Qwen/Qwen-Image-Edit",
        served_name="qwen",
        quantize="gguf",
        gguf_file="/models/Qwen_Image_Edit-Q4_0.gguf",
        text_encoder_quantize="bnb-nf4",
        offload="group-leaf",
        vae_slicing="true",
    )
    s = Settings()
    assert (s.quantize, s.gguf_file, s.text_encoder_quantize) == (
        "gguf",
        "/models/Qwen_Image_Edit-Q4_0.gguf",
        "bnb-nf4",
    )
    assert (s.offload, s.load_offload, s.vae_slicing) == ("group-leaf", "group-leaf", True)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"quantize": "bnb-nf4", "device": "cpu"}, "needs a CUDA GPU"),
        ({"text_encoder_quantize": "torchao-int4", "device": "cpu"}, "needs a CUDA GPU"),
        ({"quantize": "gguf"}, "needs gguf_file"),
        ({"offload": "sequential", "device": "cpu"}, "needs a CUDA device"),
        ({"cpu_offload": "true", "offload": "group-block"}, "cannot be combined"),
    ],
)
def test_impossible_combinations_are_refused_with_the_model_named(
    env, values: dict[str, str], reason: str
) -> None:
    env(model="org/pix", served_name="pix", **values)
    with pytest.raises(ValidationError) as caught:
        Settings()
    described = Settings.describe(caught.value)
    assert "model 'pix'" in described and reason in described


def test_the_server_exits_2_at_start_naming_the_model_and_the_reason() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_IMAGE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        HOMELAB_IMAGE_MODEL="org/pix",
        HOMELAB_IMAGE_SERVED_NAME="pix",
        HOMELAB_IMAGE_DEVICE="cpu",
        HOMELAB_IMAGE_QUANTIZE="bnb-nf4",
    )
    result = subprocess.run(
        [sys.executable, "-m", "imageserver"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "model 'pix'" in result.stderr and "bnb-nf4" in result.stderr


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("https://huggingface.co/city96/FLUX.1-dev-gguf/blob/main/flux1-dev-Q4_K_S.gguf", "Q4_K_S"),
        ("/m/Qwen_Image_Edit-Q4_0.gguf", "Q4_0"),
        ("/m/unet-q8_0.gguf", "Q8_0"),
        ("/m/model.BF16.gguf", "BF16"),
        ("/m/Q4_0-dir/model.gguf", None),
        ("/m/model.gguf", None),
    ],
)
def test_the_gguf_type_comes_from_the_file_name(name: str, kind: str | None) -> None:
    assert gguf_type(name) == kind


def test_health_carries_what_was_loaded_and_old_readers_ignore_it() -> None:
    loaded = ImageLoaded(
        pipeline="FluxPipeline", device="cuda", dtype="bf16", quantize="gguf", gguf_type="Q4_0"
    )
    body = ImageHealth(status="ready", model="flux", loaded=loaded).model_dump_json()
    again = ImageHealth.model_validate_json(body)
    assert again.loaded == loaded
    assert ImageHealth.model_validate({"status": "ready", "model": "x"}).loaded is None
