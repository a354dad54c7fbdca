"""Parking the image server's pipeline on the CPU and back (`imageserver.park`), over a
fake model whose pipelines record their moves: the routes, the worker thread, the refusal
while parked, and what cannot be parked."""

from __future__ import annotations

import threading

import pytest
from imageserver_fakes import FakeModel, loader_for, serve, settings
from test_imageserver_api import assert_envelope, wait_status


class FakePipe:
    def __init__(self) -> None:
        self.moves: list[tuple[str, str]] = []

    def to(self, device: str) -> FakePipe:
        self.moves.append((device, threading.current_thread().name))
        return self


class ParkableModel(FakeModel):
    def __init__(self) -> None:
        super().__init__()
        shared = FakePipe()
        self.pipelines = {"generate": shared, "edit": shared, "inpaint": FakePipe()}


GENERATE = {"prompt": "a lighthouse", "size": "64x64"}


async def test_park_moves_every_pipeline_to_the_cpu_once_and_unpark_moves_them_back() -> None:
    model = ParkableModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        assert (await client.get("/is_parked")).json() == {"is_parked": False}
        assert (await client.post("/park")).status_code == 200
        assert (await client.post("/park")).status_code == 200  # idempotent
        assert (await client.get("/is_parked")).json() == {"is_parked": True}
        refused = await client.post("/v1/images/generations", json=GENERATE)
        assert_envelope(refused, 503, "model_parked")
        assert (await client.get("/health")).json()["status"] == "ready"
        assert (await client.post("/unpark")).status_code == 200
        assert (await client.get("/is_parked")).json() == {"is_parked": False}
        answer = await client.post("/v1/images/generations", json=GENERATE)
        assert answer.status_code == 200, answer.text
    shared, inpaint = model.pipelines["generate"], model.pipelines["inpaint"]
    assert [d for d, _ in shared.moves] == ["cpu", "cpu"]  # one move each way: the home is cpu
    assert [d for d, _ in inpaint.moves] == ["cpu", "cpu"]
    assert {t for _, t in shared.moves} == {t for t in model.threads}  # the worker thread


async def test_a_model_still_loading_cannot_be_parked() -> None:
    gate = threading.Event()
    async with serve(settings(), loader_for(ParkableModel(), gate)) as client:
        assert_envelope(await client.post("/park"), 503, "model_loading")
        gate.set()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"device": "cuda", "cpu_offload": True}, "offload 'model'"),
        ({"device": "cpu", "cpu_offload": True}, "offload 'model'"),
        ({"device": "cuda", "offload": "sequential"}, "offload 'sequential'"),
        ({"device": "cuda", "offload": "group-block"}, "offload 'group-block'"),
        ({"device": "cpu", "offload": "group-leaf"}, "offload 'group-leaf'"),
    ],
)
async def test_an_offloaded_pipeline_cannot_be_parked_and_nothing_moves(
    options: dict, named: str
) -> None:
    model = ParkableModel()
    async with serve(settings(**options), loader_for(model)) as c:
        await wait_status(c, "ready")
        refused = await c.post("/park")
        assert_envelope(refused, 409, "cannot_park")
        message = refused.json()["error"]["message"]
        assert message.startswith(f"model 'fake-image': {named} cannot be parked"), message
        assert (await c.get("/is_parked")).json() == {"is_parked": False}
        assert (await c.post("/v1/images/generations", json=GENERATE)).status_code == 200
    assert model.pipelines["generate"].moves == []


async def test_a_move_that_fails_half_way_is_undone_and_the_model_keeps_serving() -> None:
    class Refusing(FakePipe):
        def to(self, device: str) -> FakePipe:
            if device == "cpu":
                raise ValueError("`.to` is not supported for `4-bit` bitsandbytes models")
            return super().to(device)

    model = ParkableModel()
    moved, refusing = FakePipe(), Refusing()
    model.pipelines = {"generate": moved, "inpaint": refusing}
    async with serve(settings(device="cuda"), loader_for(model)) as client:
        await wait_status(client, "ready")
        assert_envelope(await client.post("/park"), 409, "cannot_park")
        assert (await client.get("/is_parked")).json() == {"is_parked": False}
    # the first pipeline went to the CPU, then back home with the rest
    assert [d for d, _ in moved.moves] == ["cpu", "cuda"]
    assert [d for d, _ in refusing.moves] == ["cuda"]


async def test_a_pipeline_that_refuses_the_move_cannot_be_parked() -> None:
    class Quantized(FakePipe):
        def to(self, device: str) -> FakePipe:
            raise ValueError("`.to` is not supported for `4-bit` bitsandbytes models")

    model = ParkableModel()
    model.pipelines = {"generate": Quantized()}
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        refused = await client.post("/park")
        assert_envelope(refused, 409, "cannot_park")
        assert "bitsandbytes" in refused.json()["error"]["message"]
        assert (await client.get("/is_parked")).json() == {"is_parked": False}


async def test_the_park_routes_want_the_upstream_key() -> None:
    async with serve(settings(api_key="k" * 32), loader_for(ParkableModel())) as client:
        for method, path in (("POST", "/park"), ("POST", "/unpark"), ("GET", "/is_parked")):
            assert (await client.request(method, path)).status_code == 401
        auth = {"Authorization": "Bearer " + "k" * 32}
        await wait_status(client, "ready", auth)
        assert (await client.post("/park", headers=auth)).status_code == 200
