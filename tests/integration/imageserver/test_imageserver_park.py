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
