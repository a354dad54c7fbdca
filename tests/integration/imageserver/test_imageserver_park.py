"""Parking the real image server's tiny pipeline on the CPU and back, as a real process
(marker `diffusers`: real torch and diffusers on the CPU). The move is a no-op on the CPU,
but the states, the routes and the worker-thread ordering are the real ones; in-process,
`imageserver.park.move` leaves every module of every pipeline on the CPU."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.diffusers

GENERATE = {"prompt": "a lighthouse", "size": "64x64", "steps": 1}


def test_the_tiny_pipeline_parks_and_unparks_and_then_generates(
    start_server, tiny_pipeline: Path
) -> None:
    server = start_server(tiny_pipeline)
    server.wait_for("ready", "failed")
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        assert client.get("/is_parked").json() == {"is_parked": False}
        assert client.post("/park").status_code == 200
        assert client.get("/is_parked").json() == {"is_parked": True}
        refused = client.post("/v1/images/generations", json=GENERATE)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_parked"
        assert client.post("/unpark").status_code == 200
        answer = client.post("/v1/images/generations", json=GENERATE)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["data"]) == 1
    assert "parked on the CPU" in server.logs() and "back on cpu" in server.logs()


def test_move_puts_every_module_on_the_cpu(tiny_pipeline: Path) -> None:
    import torch

    from imageserver.diffusers_model import load_diffusers_model
    from imageserver.park import move
    from imageserver.settings import Settings

    model = load_diffusers_model(
        Settings(model=str(tiny_pipeline), served_name="tiny", device="cpu", dtype="fp32")
    )
    move(model, "cpu")
    for pipe in model.pipelines.values():
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                assert {p.device.type for p in module.parameters()} <= {"cpu"}


@pytest.mark.parametrize("quantize", ["gguf", "quanto-int8", "torchao-int8"])
def test_a_quantized_pipeline_parks_and_stays_quantized(
    tiny_pipeline: Path, tmp_path: Path, quantize: str
) -> None:
    # issue 25's quantized weights move with pipe.to and keep their quantized type, so a
    # quantized image model may be kept warm (models.json refuses warm only with offload)
    backend = {"gguf": "gguf", "quanto-int8": "optimum.quanto", "torchao-int8": "torchao"}
    pytest.importorskip(backend[quantize], reason=f"{backend[quantize]} is not installed")
    from imageserver.diffusers_model import load_diffusers_model
    from imageserver.model import GenerateJob
    from imageserver.park import move
    from imageserver.settings import Settings
    from imageserver.tiny import denoiser_gguf

    options: dict[str, str] = {"quantize": quantize}
    if quantize == "gguf":
        options["gguf_file"] = str(denoiser_gguf(tiny_pipeline, tmp_path / "unet-Q8_0.gguf"))
    model = load_diffusers_model(
        Settings(
            model=str(tiny_pipeline), served_name="tiny-q", device="cpu", dtype="fp32", **options
        )
    )
    unet = model.pipelines["generate"].unet

    def weight_types() -> dict[str, str]:
        return {n: type(p).__name__ for n, p in unet.named_parameters() if p.dim() == 2}

    before = weight_types()
    assert set(before.values()) - {"Parameter"}, "no quantized weights in the UNet"
    move(model, "cpu")  # park
    move(model, "cpu")  # unpark: home is the CPU here
    assert weight_types() == before
    job = GenerateJob(prompt="a cat", n=1, width=64, height=64, steps=2, seed=1)
    assert [im.size for im in model.generate(job)] == [(64, 64)]
