"""A quantized image model end to end: the real manager (process runtime) starts the real
diffusers image server with models.json's loading options (`quantize` gguf, with a GGUF
UNet written by the test; `text_encoder_quantize` quanto-int8; `offload` group-leaf),
behind the real proxy with an API key, and the real `openai` SDK generates and edits
pictures with it (tests/integration/imageserver/test_imageserver_loading.py checks what
its /health says it loaded).

Marker ``diffusers`` (torch, diffusers, gguf, optimum-quanto on the CPU); no vLLM. The
stack is tests/e2e/browser/uistack.py's `run_stack`.
"""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from PIL import Image

from tests.e2e.browser.uistack import API_KEY, Stack, free_port, run_stack

pytestmark = pytest.mark.diffusers

LOAD_DEADLINE_S = 600.0
"""A deadline for a start on a busy machine, not an expectation (a few seconds idle)."""


@pytest.fixture(scope="module")
def quantized_stack(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path) -> Iterator[Stack]:
    pytest.importorskip("gguf", reason="gguf is not installed (pip install -e '.[image]')")
    pytest.importorskip(
        "optimum.quanto", reason="optimum-quanto is not installed (pip install -e '.[image]')"
    )
    from imageserver.tiny import denoiser_gguf

    workdir = tmp_path_factory.mktemp("image-quantized")
    unet = denoiser_gguf(tiny_sd, workdir / "unet-Q8_0.gguf")
    port = free_port()
    models = {
        "tiny-q": {
            "type": "image",
            "container": f"quantized-{port}",
            "port": port,
            "image": "homelab-ai/imageserver:0.1.0",
            "model": str(tiny_sd),
            "command": [sys.executable, "-m", "imageserver"],
            "device": "cpu",
            "dtype": "fp32",
            "quantize": "gguf",
            "gguf_file": str(unet),
            "text_encoder_quantize": "quanto-int8",
            "offload": "group-leaf",
            "vae_slicing": True,
            "sizes": ["64x64"],
            "steps": 2,
            "gpu": False,
            "env": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            "start_timeout": LOAD_DEADLINE_S,
        }
    }
    settings = {"HOMELAB_QUEUE_TIMEOUT": str(LOAD_DEADLINE_S)}
    with run_stack(
        workdir, models, "tiny-q", name="image-quantized", manager_settings=settings
    ) as stack:
        yield stack


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_sdk_generates_and_edits_with_a_quantized_model(quantized_stack: Stack) -> None:
    sdk = openai.OpenAI(
        base_url=quantized_stack.auth_proxy_url + "v1", api_key=API_KEY, max_retries=0, timeout=600
    )
    made = sdk.images.generate(
        model="tiny-q", prompt="a lighthouse", size="64x64", extra_body={"seed": 3}
    )
    picture = Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json or "")))
    assert picture.size == (64, 64)
    edited = sdk.images.edit(
        model="tiny-q",
        image=("in.png", _png((64, 64)), "image/png"),
        prompt="make it blue",
        extra_body={"steps": 4},
    )
    assert Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json or ""))).size == (64, 64)
