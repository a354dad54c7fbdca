"""The image server as a real process on the tiny pipeline: health, generations, edits,
the openai SDK, and a clean SIGTERM. Marker `diffusers` (real torch + diffusers on the CPU)."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.tools import connect_from, trickle, until_closed

from .conftest import ImageServerProcess, free_port, server_env

pytestmark = pytest.mark.diffusers


def png_bytes(size: tuple[int, int], mode: str = "RGB", color: object = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")  # type: ignore[arg-type]
    return buffer.getvalue()


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


@pytest.fixture(scope="module")
def server(
    tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageServerProcess]:
    """One server for the module, watched from its first second."""
    port = free_port()
    log = tmp_path_factory.mktemp("imageserver") / "server.log"
    proc = ImageServerProcess(server_env(tiny_pipeline, port, queue_limit="4"), log)
    try:
        proc.wait_for("ready", "failed")
        yield proc
    finally:
        proc.terminate()


def test_health_is_up_while_loading_then_ready(server: ImageServerProcess) -> None:
    # The port answered before the pipeline was loaded, and the only move was loading -> ready.
    assert server.statuses[0] == "loading", server.statuses
    assert server.statuses[-1] == "ready"
    first_ready = server.statuses.index("ready")
    assert set(server.statuses[:first_ready]) == {"loading"}
    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 200
    body = response.json()
    loaded = body.pop("loaded")  # how it was loaded (wire.image_options.ImageLoaded)
    assert body == {"status": "ready", "error": None, "model": "tiny-sd"}
    assert loaded["quantize"] == "none" and loaded["offload"] == "none", loaded


def test_models_lists_the_served_name(server: ImageServerProcess) -> None:
    body = httpx.get(f"{server.base_url}/v1/models").json()
    assert [m["id"] for m in body["data"]] == ["tiny-sd"]
    assert body["data"][0]["sizes"] == ["64x64", "128x64"]
    assert body["data"][0]["capabilities"] == {
        "pipeline": "StableDiffusionPipeline",
        "generate": True,
        "edit": True,
        "inpaint": True,
    }


def test_generation_returns_pngs_of_the_asked_size(server: ImageServerProcess) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/images/generations",
        json={"model": "tiny-sd", "prompt": "a lighthouse", "n": 2, "size": "128x64", "seed": 11},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    images = [decode(item["b64_json"]) for item in response.json()["data"]]
    assert [(im.format, im.size, im.mode) for im in images] == [("PNG", (128, 64), "RGB")] * 2
    assert images[0].tobytes() != images[1].tobytes()  # two different samples


def test_the_same_seed_gives_the_same_image(server: ImageServerProcess) -> None:
    def make(seed: int) -> bytes:
        response = httpx.post(
            f"{server.base_url}/v1/images/generations",
            json={"prompt": "seeded", "seed": seed, "steps": 2},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return decode(response.json()["data"][0]["b64_json"]).tobytes()

    assert make(5) == make(5)
    assert make(5) != make(6)


def test_edit_without_and_with_a_mask(server: ImageServerProcess) -> None:
    plain = httpx.post(
        f"{server.base_url}/v1/images/edits",
        files={"image": ("in.png", png_bytes((64, 64)), "image/png")},
        data={"prompt": "make it blue", "size": "64x64", "strength": "0.9", "steps": "3"},
        timeout=120,
    )
    assert plain.status_code == 200, plain.text
    assert decode(plain.json()["data"][0]["b64_json"]).size == (64, 64)
    mask = Image.new("RGBA", (100, 50), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 50, 50))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    masked = httpx.post(
        f"{server.base_url}/v1/images/edits",
        files={
            "image": ("in.png", png_bytes((100, 50)), "image/png"),
            "mask": ("mask.png", buffer.getvalue(), "image/png"),
        },
        data={"prompt": "a window", "n": "2", "size": "128x64"},
        timeout=120,
    )
    assert masked.status_code == 200, masked.text
    assert [decode(d["b64_json"]).size for d in masked.json()["data"]] == [(128, 64)] * 2


def test_bad_input_gets_400_envelopes_and_the_server_stays_up(server: ImageServerProcess) -> None:
    url = server.base_url
    cases = [
        httpx.post(f"{url}/v1/images/generations", json={"prompt": "x", "size": "60x64"}),
        httpx.post(f"{url}/v1/images/generations", json={"prompt": "x", "n": 10}),
        httpx.post(
            f"{url}/v1/images/edits",
            files={"image": ("in.png", b"\x89PNG broken", "image/png")},
            data={"prompt": "x"},
        ),
        httpx.post(
            f"{url}/v1/images/edits",
            files={
                "image": ("in.png", png_bytes((64, 64)), "image/png"),
                "mask": ("m.png", png_bytes((32, 32), "L", 255), "image/png"),
            },
            data={"prompt": "x"},
        ),
    ]
    for response in cases:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["source"] == "model_server" and error["type"] == "invalid_request_error"
    assert [r.json()["error"]["param"] for r in cases] == ["size", "n", "image", "mask"]
    assert httpx.get(f"{url}/health").json()["status"] == "ready"


def test_the_openai_sdk_generates_and_edits(server: ImageServerProcess) -> None:
    openai = pytest.importorskip("openai", reason="the openai SDK is a dev dependency")
    client = openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120
    )
    generated = client.images.generate(
        model="tiny-sd",
        prompt="a red bicycle",
        n=1,
        size="128x64",  # type: ignore[arg-type]
        response_format="b64_json",
        extra_body={"seed": 3, "steps": 2},
    )
    assert decode(generated.data[0].b64_json).size == (128, 64)
    assert generated.size == "128x64"
    edited = client.images.edit(
        model="tiny-sd",
        image=("in.png", png_bytes((64, 64)), "image/png"),
        prompt="paint it",
        size="64x64",  # type: ignore[arg-type]
        extra_body={"steps": 2},
    )
    assert decode(edited.data[0].b64_json).size == (64, 64)
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="tiny-sd", prompt="x", size="1000x1000")  # type: ignore[arg-type]
    assert info.value.status_code == 400
    assert info.value.body["code"] == "invalid_size"  # type: ignore[index]


def test_sigterm_stops_the_server_cleanly(tiny_pipeline: Path, start_server) -> None:
    proc = start_server(tiny_pipeline, warmup_steps="0")
    proc.wait_for("ready")
    # uvicorn shuts down, then re-raises the captured SIGTERM: -15 after a clean shutdown.
    assert proc.terminate() in (0, -15)
    assert "Application shutdown complete" in proc.logs()


def test_an_edit_only_model_edits_and_refuses_generation(
    tiny_edit_pipeline: Path, start_server
) -> None:
    proc = start_server(tiny_edit_pipeline)
    assert proc.wait_for("ready", "failed")["status"] == "ready"
    refused = httpx.post(f"{proc.base_url}/v1/images/generations", json={"prompt": "x"})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (
        error["code"] == "unsupported_task" and "StableDiffusionImg2ImgPipeline" in error["message"]
    )
    edited = httpx.post(
        f"{proc.base_url}/v1/images/edits",
        files={"image": ("in.png", png_bytes((64, 64)), "image/png")},
        data={"prompt": "x"},
        timeout=120,
    )
    assert edited.status_code == 200, edited.text
    assert decode(edited.json()["data"][0]["b64_json"]).size == (64, 64)


def test_a_folder_that_does_not_load_reports_failed_with_its_reason(
    broken_pipeline: Path, start_server
) -> None:
    proc = start_server(broken_pipeline)
    body = proc.wait_for("ready", "failed")
    assert body["status"] == "failed"
    assert body["model"] == "tiny-sd"
    assert str(broken_pipeline) in body["error"] and "cannot load pipeline" in body["error"]
    assert set(proc.statuses[:-1]) <= {"loading"}
    health = httpx.get(f"{proc.base_url}/health")
    assert health.status_code == 503 and health.json() == body
    refused = httpx.post(f"{proc.base_url}/v1/images/generations", json={"prompt": "x"})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "model_load_failed"
    assert proc.proc.poll() is None  # still up, so the manager can read the reason


def test_invalid_settings_exit_2_with_the_variable_named(tiny_pipeline: Path, start_server) -> None:
    proc = start_server(tiny_pipeline, sizes="100x100")
    assert proc.proc.wait(60) == 2
    assert "HOMELAB_IMAGE_SIZES" in proc.logs()


def test_silent_and_slow_header_sockets_are_closed_in_time(server: ImageServerProcess) -> None:
    """`wire.http_server`'s deadlines on the image server (imageserver.__main__'s limits):
    a silent socket closed after the 5 s keep-alive, a trickled request's headers cut
    with a 408 after 10 s."""

    async def scenario() -> list[tuple[bytes, float]]:
        started = time.monotonic()
        silent, _ = await connect_from(server.base_url, "127.0.0.30")
        slow, slow_writer = await connect_from(server.base_url, "127.0.0.31")
        feeding = asyncio.create_task(trickle(slow_writer, b"GET /health HTTP/1.1\r\nX: ", b"a"))
        closes = [await until_closed(silent, 30), await until_closed(slow, 30)]
        feeding.cancel()
        return [(data, at - started) for data, at in closes]

    (silent, silent_s), (slow, slow_s) = asyncio.run(scenario())
    assert silent == b"" and 4.5 <= silent_s < 9
    assert slow.startswith(b"HTTP/1.1 408 ") and 9.5 <= slow_s < 14
