"""The image server's loading options on the CPU, with the real diffusers loading code and
the tiny pipeline: a GGUF UNet written with the `gguf` package, quanto int8 and int4 and
torchao int8 weights, model and group offloading, VAE slicing and tiling; parking each
quantized pipeline (the warm tier); what was loaded is reported; the
options that cannot load here are refused at start-up with the model named.

Marker `diffusers`. Needs gguf, optimum-quanto and torchao (the `image` extra).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver.errors import LoadFailed
from imageserver.model import EditJob, GenerateJob
from imageserver.settings import Settings

from .conftest import ImageServerProcess, free_port, server_env

pytestmark = pytest.mark.diffusers


def settings(model: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model": str(model),
        "served_name": "tiny-q",
        "device": "cpu",
        "dtype": "fp32",
        "sizes": "64x64",
    }
    values.update(overrides)
    return Settings(**values)


def load(model: Path, **overrides: object):
    from imageserver.diffusers_model import load_diffusers_model

    return load_diffusers_model(settings(model, **overrides))


def generate(model) -> None:  # noqa: ANN001
    images = model.generate(GenerateJob(prompt="a cat", n=1, width=64, height=64, steps=2, seed=1))
    assert [im.size for im in images] == [(64, 64)]


@pytest.fixture(scope="module")
def unet_gguf(tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf", reason="gguf is not installed (pip install -e '.[image]')")
    from imageserver.tiny import denoiser_gguf

    return denoiser_gguf(tiny_pipeline, tmp_path_factory.mktemp("gguf") / "unet-Q8_0.gguf")


def _linear_weights(model) -> list[str]:  # noqa: ANN001
    unet = model.pipelines["generate"].unet
    return sorted({type(m).__name__ for m in unet.modules() if "Linear" in type(m).__name__})


def test_a_gguf_unet_loads_through_the_option_and_generates(
    tiny_pipeline: Path, unet_gguf: Path
) -> None:
    model = load(tiny_pipeline, quantize="gguf", gguf_file=str(unet_gguf))
    # diffusers' GGUF loader swaps the linear layers whose weights are quantized
    assert "GGUFLinear" in _linear_weights(model)
    generate(model)
    assert model.loaded.quantize == "gguf"
    assert model.loaded.gguf_type == "Q8_0"
    # the edit pipelines share the GGUF UNet
    edit = model.pipelines["edit"]
    assert edit.unet is model.pipelines["generate"].unet


@pytest.mark.parametrize("option", ["quanto-int8", "torchao-int8", "quanto-int4"])
def test_quantized_weights_load_and_generate_and_edit(tiny_pipeline: Path, option: str) -> None:
    """Every backend option the CPU can run (torchao-int4 and bnb-nf4 need CUDA: refused at
    start-up, tests/unit/imageserver/test_imageserver_load_options.py)."""
    backend = {"quanto": "optimum.quanto", "torchao": "torchao"}[option.split("-")[0]]
    pytest.importorskip(backend, reason=f"{backend} is not installed (pip install -e '.[image]')")
    model = load(tiny_pipeline, quantize=option, text_encoder_quantize=option)
    pipe = model.pipelines["generate"]
    weight = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight
    text_weight = pipe.text_encoder.encoder.layers[0].mlp.fc1.weight
    # quantized tensors, not plain float ones
    assert type(weight).__name__ != "Parameter", type(weight)
    assert type(text_weight).__name__ != "Parameter", type(text_weight)
    generate(model)
    from PIL import Image

    edited = model.edit(
        EditJob(
            prompt="x",
            image=Image.new("RGB", (64, 64), (9, 9, 9)),
            n=1,
            width=64,
            height=64,
            steps=4,
            seed=2,
        )
    )
    assert edited[0].size == (64, 64)
    assert (model.loaded.quantize, model.loaded.text_encoder_quantize) == (option, option)
    assert model.loaded.text_encoders == ["text_encoder"]


@pytest.mark.parametrize("offload", ["model", "group-block", "group-leaf"])
def test_offloading_runs_on_the_cpu(tiny_pipeline: Path, unet_gguf: Path, offload: str) -> None:
    model = load(
        tiny_pipeline,
        offload=offload,
        quantize="gguf",
        gguf_file=str(unet_gguf),
        vae_slicing=True,
        vae_tiling=True,
    )
    unet = model.pipelines["generate"].unet
    hooked = [
        m
        for m in unet.modules()
        if getattr(m, "_hf_hook", None) or getattr(m, "_diffusers_hook", None)
    ]
    assert hooked, "no offload hooks in the UNet"
    generate(model)
    assert (model.loaded.offload, model.loaded.vae_slicing, model.loaded.vae_tiling) == (
        offload,
        True,
        True,
    )


def test_a_missing_gguf_file_fails_the_load_with_the_model_named(tiny_pipeline: Path) -> None:
    with pytest.raises(LoadFailed) as caught:
        load(tiny_pipeline, quantize="gguf", gguf_file="/nowhere/unet-Q4_0.gguf")
    assert "tiny-q" in str(caught.value)
    assert "unet-Q4_0.gguf" in str(caught.value)


def test_a_missing_backend_package_is_refused_with_the_model_named(
    tiny_pipeline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("optimum") else real(name, *a),
    )
    with pytest.raises(
        LoadFailed, match=r"model 'tiny-q': quantize 'quanto-int8' needs .*optimum-quanto"
    ):
        load(tiny_pipeline, quantize="quanto-int8")


def test_the_server_reports_what_it_loaded_in_its_health(
    tiny_pipeline: Path, unet_gguf: Path, tmp_path: Path
) -> None:
    env = server_env(
        tiny_pipeline,
        free_port(),
        quantize="gguf",
        gguf_file=str(unet_gguf),
        text_encoder_quantize="torchao-int8",
        offload="model",
        vae_tiling="true",
    )
    server = ImageServerProcess(env, tmp_path / "server.log")
    try:
        body = server.wait_for("ready", "failed")
    finally:
        server.terminate()
    assert body["status"] == "ready", body
    assert body["loaded"] == {
        "pipeline": "StableDiffusionPipeline",
        "device": "cpu",
        "dtype": "fp32",
        "quantize": "gguf",
        "gguf_type": "Q8_0",
        "text_encoder_quantize": "torchao-int8",
        "text_encoders": ["text_encoder"],
        "offload": "model",
        "vae_slicing": False,
        "vae_tiling": True,
    }
    assert "loaded" not in server.first_body  # not while loading


def test_a_gguf_file_that_does_not_load_fails_the_start_naming_the_model(
    tiny_pipeline: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "unet-Q4_0.gguf"
    broken.write_bytes(b"not a gguf file")
    env = server_env(tiny_pipeline, free_port(), quantize="gguf", gguf_file=str(broken))
    server = ImageServerProcess(env, tmp_path / "server.log")
    try:
        body = server.wait_for("ready", "failed")
    finally:
        server.terminate()
    assert body["status"] == "failed"
    assert body["error"].startswith(
        "model 'tiny-sd': cannot load UNet2DConditionModel from the GGUF file"
    )


def _quantized_weights(model) -> list[str]:  # noqa: ANN001
    """The tensor classes of the UNet's and text encoder's weights that are not plain."""
    pipe = model.pipelines["generate"]
    found = set()
    for module in (pipe.unet, pipe.text_encoder):
        for param in module.parameters():
            if type(param).__name__ != "Parameter":
                found.add(type(param).__name__)
    return sorted(found)


@pytest.mark.parametrize(
    "options",
    [
        {"quantize": "gguf"},
        {"quantize": "quanto-int8", "text_encoder_quantize": "quanto-int8"},
        {"quantize": "torchao-int8", "text_encoder_quantize": "torchao-int8"},
    ],
    ids=["gguf", "quanto-int8", "torchao-int8"],
)
def test_a_quantized_pipeline_parks_and_unparks_and_makes_the_same_picture(
    tiny_pipeline: Path, unet_gguf: Path, options: dict[str, str]
) -> None:
    """The warm tier's move (`imageserver.park.move`, diffusers' ``pipe.to``) lets each
    quantized pipeline through and leaves its weights quantized. On the CPU the copy itself
    is a no-op; bench/image_memory.py parks on a GPU."""
    from imageserver.park import move

    backend = options["quantize"].split("-")[0]
    pytest.importorskip({"gguf": "gguf", "quanto": "optimum.quanto", "torchao": "torchao"}[backend])
    gguf = {"gguf_file": str(unet_gguf)} if backend == "gguf" else {}
    model = load(tiny_pipeline, **options, **gguf)
    before = _quantized_weights(model)
    assert before, "no quantized weights to park"
    job = GenerateJob(prompt="a cat", n=1, width=64, height=64, steps=2, seed=5)
    first = model.generate(job)[0]
    move(model, "cpu")  # park
    move(model, "cpu")  # unpark: this model's home is the CPU
    assert _quantized_weights(model) == before
    again = model.generate(job)[0]
    assert again.tobytes() == first.tobytes()


def test_a_quantized_server_parks_and_an_offloaded_one_refuses_clearly(
    tiny_pipeline: Path, unet_gguf: Path, tmp_path: Path
) -> None:
    import httpx

    generate_body = {"prompt": "a lighthouse", "size": "64x64", "steps": 1}
    quantized = ImageServerProcess(
        server_env(
            tiny_pipeline,
            free_port(),
            quantize="gguf",
            gguf_file=str(unet_gguf),
            text_encoder_quantize="quanto-int8",
        ),
        tmp_path / "quantized.log",
    )
    try:
        assert quantized.wait_for("ready", "failed")["status"] == "ready"
        with httpx.Client(base_url=quantized.base_url, timeout=60) as client:
            assert client.post("/park").status_code == 200
            assert client.get("/is_parked").json() == {"is_parked": True}
            assert client.post("/unpark").status_code == 200
            answer = client.post("/v1/images/generations", json=generate_body)
            assert answer.status_code == 200, answer.text
    finally:
        quantized.terminate()
    offloaded = ImageServerProcess(
        server_env(tiny_pipeline, free_port(), offload="group-leaf"), tmp_path / "offloaded.log"
    )
    try:
        assert offloaded.wait_for("ready", "failed")["status"] == "ready"
        with httpx.Client(base_url=offloaded.base_url, timeout=60) as client:
            refused = client.post("/park")
            assert refused.status_code == 409, refused.text
            error = refused.json()["error"]
            assert error["code"] == "cannot_park"
            assert error["message"].startswith(
                "model 'tiny-sd': offload 'group-leaf' cannot be parked"
            )
            assert client.get("/is_parked").json() == {"is_parked": False}
            answer = client.post("/v1/images/generations", json=generate_body)
            assert answer.status_code == 200, answer.text
    finally:
        offloaded.terminate()
