"""The image server's HTTP contract over a fake model: health states, the images API,
the error envelopes, the bounded queue and the worker thread."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from imageserver_fakes import (
    EDIT_ONLY,
    GENERATE_ONLY,
    OOM,
    FakeModel,
    decode_b64_png,
    loader_for,
    png,
    serve,
    settings,
)

from imageserver.errors import GenerationFailed, LoadFailed
from imageserver.model import StepMeter


async def wait_status(client: httpx.AsyncClient, want: str, headers: dict | None = None) -> dict:
    for _ in range(2000):
        body = (await client.get("/health", headers=headers)).json()
        if body["status"] == want:
            return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"health never reached {want!r}; last {body}")


async def wait_admitted(client: httpx.AsyncClient, count: int) -> None:
    """Until `count` requests are running or queued on the GPU worker."""
    worker = client._transport.app.state.worker  # type: ignore[attr-defined]
    for _ in range(3000):
        if worker.admitted == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{worker.admitted} requests admitted, expected {count}")


def assert_envelope(
    response: httpx.Response, status: int, code: str, param: str | None = ...
) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "source"}
    assert error["source"] == "model_server"
    assert error["code"] == code
    assert error["message"]
    if param is not ...:
        assert error["param"] == param
    return error


async def test_health_goes_from_loading_to_ready_after_the_warm_up() -> None:
    model = FakeModel()
    gate = threading.Event()
    async with serve(settings(), loader_for(model, gate)) as client:
        response = await client.get("/health")
        assert response.status_code == 200
        assert response.json() == {"status": "loading", "error": None, "model": "fake-image"}
        refused = await client.post("/v1/images/generations", json={"prompt": "x"})
        assert_envelope(refused, 503, "model_loading")
        assert refused.headers["Retry-After"]
        gate.set()
        body = await wait_status(client, "ready")
        assert body == {"status": "ready", "error": None, "model": "fake-image"}
        # The warm-up ran once, at the smallest allowed size, with the configured steps.
        assert len(model.jobs) == 1
        warm = model.jobs[0]
        assert (warm.width, warm.height, warm.steps, warm.n) == (64, 64, 1, 1)


async def test_warm_up_of_an_edit_only_model_is_an_edit() -> None:
    model = FakeModel(capabilities=EDIT_ONLY)
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
    assert len(model.jobs) == 1 and hasattr(model.jobs[0], "image")
    # int(steps * strength) must be >= 1 for image-to-image, so edits warm up with 4 steps.
    assert model.jobs[0].steps == 4


async def test_a_load_failure_reports_failed_with_its_reason_and_requests_get_503() -> None:
    def broken(_settings):
        raise LoadFailed("cannot load pipeline from '/nowhere': OSError: no model_index.json")

    async with serve(settings(), broken) as client:
        body = await wait_status(client, "failed")
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json() == {
            "status": "failed",
            "error": "cannot load pipeline from '/nowhere': OSError: no model_index.json",
            "model": "fake-image",
        }
        assert body["error"].startswith("cannot load pipeline")
        refused = await client.post("/v1/images/generations", json={"prompt": "x"})
        error = assert_envelope(refused, 503, "model_load_failed")
        assert "no model_index.json" in error["message"]


async def test_a_failing_warm_up_is_a_failed_load() -> None:
    model = FakeModel(fail_next=GenerationFailed("the pipeline failed: boom"))
    async with serve(settings(), loader_for(model)) as client:
        body = await wait_status(client, "failed")
    assert "warm-up generation at 64x64 failed" in body["error"]
    assert "boom" in body["error"]


async def test_an_unexpected_loader_exception_still_reports_failed() -> None:
    def broken(_settings):
        raise KeyError("unet")

    async with serve(settings(), broken) as client:
        body = await wait_status(client, "failed")
    assert body["error"] == "KeyError: 'unet'"


async def test_warm_up_can_be_switched_off() -> None:
    model = FakeModel()
    async with serve(settings(warmup_steps=0), loader_for(model)) as client:
        await wait_status(client, "ready")
    assert model.jobs == []


async def test_generation_returns_n_pngs_of_the_requested_size() -> None:
    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        response = await client.post(
            "/v1/images/generations",
            json={
                "prompt": "a red fox",
                "n": 2,
                "size": "128x64",
                "seed": 7,
                "steps": 5,
                "guidance": 4.5,
                "negative_prompt": "blur",
                "quality": "hd",
                "model": "fake-image",
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["created"], int)
    assert body["size"] == "128x64" and body["output_format"] == "png"
    images = [decode_b64_png(item["b64_json"]) for item in body["data"]]
    assert [(im.format, im.size) for im in images] == [("PNG", (128, 64))] * 2
    job = model.jobs[-1]
    assert (job.prompt, job.n, job.seed, job.steps, job.guidance, job.negative_prompt) == (
        "a red fox",
        2,
        7,
        5,
        4.5,
        "blur",
    )


async def test_generation_defaults_come_from_settings() -> None:
    model = FakeModel()
    async with serve(settings(steps=9), loader_for(model)) as client:
        await wait_status(client, "ready")
        response = await client.post("/v1/images/generations", json={"prompt": "p"})
        second = await client.post("/v1/images/generations", json={"prompt": "p"})
    assert response.status_code == 200
    assert [decode_b64_png(d["b64_json"]).size for d in response.json()["data"]] == [(64, 64)]
    first_job, second_job = model.jobs[-2], model.jobs[-1]
    assert (first_job.n, first_job.steps, first_job.guidance) == (1, 9, None)
    assert second.status_code == 200
    assert first_job.seed != second_job.seed  # a fresh random seed per request


@pytest.mark.parametrize("fmt,pil", [("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_output_format(fmt: str, pil: str) -> None:
    async with serve(settings(), loader_for(FakeModel())) as client:
        await wait_status(client, "ready")
        response = await client.post(
            "/v1/images/generations", json={"prompt": "p", "output_format": fmt}
        )
    assert response.status_code == 200
    assert decode_b64_png(response.json()["data"][0]["b64_json"]).format == pil


@pytest.mark.parametrize(
    "body,param,code",
    [
        ({"prompt": "p", "size": "65x64"}, "size", "invalid_size"),
        ({"prompt": "p", "size": "256x256"}, "size", "invalid_size"),
        ({"prompt": "p", "size": "big"}, "size", "invalid_size"),
        ({"prompt": "p", "n": 0}, "n", "invalid_request"),
        ({"prompt": "p", "n": 4}, "n", "invalid_request"),
        ({"prompt": "p", "n": "two"}, "n", "invalid_request"),
        ({"prompt": ""}, "prompt", "invalid_request"),
        ({"n": 1}, "prompt", "invalid_request"),
        ({"prompt": "p", "response_format": "url"}, "response_format", "invalid_request"),
        ({"prompt": "p", "output_format": "gif"}, "output_format", "invalid_request"),
        ({"prompt": "p", "steps": 0}, "steps", "invalid_request"),
        ({"prompt": "p", "seed": -1}, "seed", "invalid_request"),
    ],
)
async def test_bad_generation_requests_get_a_400_envelope(
    body: dict, param: str, code: str
) -> None:
    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        response = await client.post("/v1/images/generations", json=body)
    assert_envelope(response, 400, code, param)
    assert len(model.jobs) == 1  # only the warm-up ran


async def test_a_body_that_is_not_json_gets_a_400_envelope() -> None:
    async with serve(settings(), loader_for(FakeModel())) as client:
        await wait_status(client, "ready")
        response = await client.post(
            "/v1/images/generations", content=b"nope", headers={"content-type": "application/json"}
        )
    error = assert_envelope(response, 400, "invalid_request", None)
    assert "JSON" in error["message"]


async def test_unknown_routes_and_methods_get_envelopes() -> None:
    async with serve(settings(), loader_for(FakeModel())) as client:
        assert_envelope(await client.get("/v1/chat/completions"), 404, "not_found")
        assert_envelope(await client.delete("/health"), 405, "method_not_allowed")


async def test_models_lists_the_one_model() -> None:
    async with serve(settings(), loader_for(FakeModel())) as client:
        await wait_status(client, "ready")
        body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["sizes"], m["max_n"]) for m in body["data"]] == [
        ("fake-image", "model", ["64x64", "128x64"], 3)
    ]
    assert body["data"][0]["capabilities"] == {
        "pipeline": "FakeText2ImagePipeline",
        "generate": True,
        "edit": True,
        "inpaint": True,
    }


async def test_progress_reports_the_running_generations_steps() -> None:
    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        idle = {"running": False, "step": 0, "steps": 0}
        assert (await client.get("/v1/progress")).json() == idle  # loading
        await wait_status(client, "ready")
        assert (await client.get("/v1/progress")).json() == idle  # no meter: nothing to say
        model.meter = StepMeter(running=True, step=3, steps=20)  # what the pipeline writes
        assert (await client.get("/v1/progress")).json() == {
            "running": True,
            "step": 3,
            "steps": 20,
        }


async def test_edit_with_and_without_mask() -> None:
    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        plain = await client.post(
            "/v1/images/edits",
            files={"image": ("in.png", png((100, 60)), "image/png")},
            data={
                "prompt": "make it blue",
                "n": "2",
                "size": "128x64",
                "strength": "0.5",
                "seed": "3",
            },
        )
        assert plain.status_code == 200, plain.text
        job = model.jobs[-1]
        assert job.mask is None and job.image.size == (128, 64) and job.image.mode == "RGB"
        assert (job.n, job.strength, job.seed) == (2, 0.5, 3)
        assert [decode_b64_png(d["b64_json"]).size for d in plain.json()["data"]] == [(128, 64)] * 2

        # OpenAI's mask: transparent = edit. Left half transparent, right half opaque.
        from PIL import Image

        mask = Image.new("RGBA", (100, 60), (0, 0, 0, 255))
        mask.paste((0, 0, 0, 0), (0, 0, 50, 60))
        import io

        buf = io.BytesIO()
        mask.save(buf, format="PNG")
        masked = await client.post(
            "/v1/images/edits",
            files={
                "image": ("in.png", png((100, 60)), "image/png"),
                "mask": ("mask.png", buf.getvalue(), "image/png"),
            },
            data={"prompt": "fill"},
        )
        assert masked.status_code == 200, masked.text
        job = model.jobs[-1]
        assert job.mask is not None and job.mask.mode == "L" and job.mask.size == (64, 64)
        assert job.mask.getpixel((5, 30)) == 255 and job.mask.getpixel((60, 30)) == 0


async def test_edit_accepts_the_image_array_field_name() -> None:
    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        response = await client.post(
            "/v1/images/edits",
            files={"image[]": ("in.png", png((64, 64)), "image/png")},
            data={"prompt": "x"},
        )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "files,data,param,code",
    [
        (
            {"image": ("a.png", b"not an image", "image/png")},
            {"prompt": "x"},
            "image",
            "invalid_image",
        ),
        ({"image": ("a.png", b"", "image/png")}, {"prompt": "x"}, "image", "invalid_image"),
        (
            {
                "image": ("a.png", png((64, 64)), "image/png"),
                "mask": ("m.png", png((32, 64), "L", 255), "image/png"),
            },
            {"prompt": "x"},
            "mask",
            "invalid_mask",
        ),
        (
            {
                "image": ("a.png", png((64, 64)), "image/png"),
                "mask": ("m.png", b"garbage", "image/png"),
            },
            {"prompt": "x"},
            "mask",
            "invalid_image",
        ),
        (
            {"image": ("a.png", png((64, 64)), "image/png")},
            {"prompt": "x", "size": "60x60"},
            "size",
            "invalid_size",
        ),
        (
            {"image": ("a.png", png((64, 64)), "image/png")},
            {"prompt": "x", "n": "9"},
            "n",
            "invalid_request",
        ),
        (
            {"image": ("a.png", png((64, 64)), "image/png")},
            {"prompt": "x", "strength": "1.5"},
            "strength",
            "invalid_request",
        ),
        ({"image": ("a.png", png((64, 64)), "image/png")}, {}, "prompt", "invalid_request"),
        ({}, {"prompt": "x"}, "image", "invalid_request"),
        (
            {"image": ("a.png", png((5000, 8), "L", 0), "image/png")},
            {"prompt": "x"},
            "image",
            "invalid_image",
        ),
    ],
)
async def test_bad_edit_requests_get_a_400_envelope(
    files: dict, data: dict, param: str, code: str
) -> None:
    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        response = await client.post("/v1/images/edits", files=files or None, data=data)
    assert_envelope(response, 400, code, param)
    assert len(model.jobs) == 1


async def test_an_upload_over_the_file_limit_gets_413() -> None:
    import os

    noise = os.urandom(70 * 1024)  # limit is 64 KiB per file, body limit ~1.1 MiB
    async with serve(settings(), loader_for(FakeModel())) as client:
        await wait_status(client, "ready")
        response = await client.post(
            "/v1/images/edits", files={"image": ("a.png", noise, "image/png")}, data={"prompt": "x"}
        )
    error = assert_envelope(response, 413, "request_too_large", "image")
    assert "65536" in error["message"]


async def test_a_body_over_the_request_limit_gets_413_before_it_is_read() -> None:
    s = settings()
    async with serve(s, loader_for(FakeModel())) as client:
        response = await client.post(
            "/v1/images/edits",
            files={"image": ("a.png", b"\0" * (s.max_body_bytes + 1), "image/png")},
            data={"prompt": "x"},
        )
    assert_envelope(response, 413, "request_too_large")


async def test_a_chunked_body_over_the_limit_gets_413() -> None:
    s = settings()

    async def chunks():
        for _ in range(s.max_body_bytes // 65536 + 2):
            yield b"\0" * 65536

    async with serve(s, loader_for(FakeModel())) as client:
        response = await client.post(
            "/v1/images/generations", content=chunks(), headers={"content-type": "application/json"}
        )
    assert_envelope(response, 413, "request_too_large")


async def test_a_chunked_body_under_the_limit_is_served() -> None:
    async def chunks():
        yield b'{"prompt": '
        yield b'"chunked"}'

    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        response = await client.post(
            "/v1/images/generations", content=chunks(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 200, response.text
    assert model.jobs[-1].prompt == "chunked"


async def test_an_edit_only_model_refuses_generation_and_edits() -> None:
    model = FakeModel(capabilities=EDIT_ONLY)
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        refused = await client.post("/v1/images/generations", json={"prompt": "p"})
        error = assert_envelope(refused, 400, "unsupported_task")
        assert "/v1/images/edits" in error["message"]
        edited = await client.post(
            "/v1/images/edits",
            files={"image": ("a.png", png((64, 64)), "image/png")},
            data={"prompt": "p"},
        )
        assert edited.status_code == 200
        masked = await client.post(
            "/v1/images/edits",
            files={
                "image": ("a.png", png((64, 64)), "image/png"),
                "mask": ("m.png", png((64, 64), "L", 255), "image/png"),
            },
            data={"prompt": "p"},
        )
        error = assert_envelope(masked, 400, "unsupported_task", "mask")
        assert "without a mask" in error["message"]


async def test_a_model_that_cannot_edit_says_so() -> None:
    async with serve(settings(), loader_for(FakeModel(capabilities=GENERATE_ONLY))) as client:
        await wait_status(client, "ready")
        response = await client.post(
            "/v1/images/edits",
            files={"image": ("a.png", png((64, 64)), "image/png")},
            data={"prompt": "p"},
        )
    error = assert_envelope(response, 400, "unsupported_task")
    assert "cannot edit images" in error["message"]


async def test_out_of_memory_is_a_503_and_the_server_keeps_serving() -> None:
    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        model.fail_next = OOM
        response = await client.post("/v1/images/generations", json={"prompt": "p"})
        error = assert_envelope(response, 503, "out_of_memory")
        assert "out of memory" in error["message"]
        assert (await client.get("/health")).json()["status"] == "ready"
        again = await client.post("/v1/images/generations", json={"prompt": "p"})
        assert again.status_code == 200


async def test_a_pipeline_error_is_a_500_envelope_without_traceback() -> None:
    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        model.fail_next = GenerationFailed("the pipeline failed: ValueError: bad latents")
        response = await client.post("/v1/images/generations", json={"prompt": "p"})
        error = assert_envelope(response, 500, "generation_failed")
        assert "Traceback" not in response.text and "bad latents" in error["message"]
        model.fail_next = ZeroDivisionError("unexpected")
        response = await client.post("/v1/images/generations", json={"prompt": "p"})
        assert_envelope(response, 500, "internal_error")
        assert "Traceback" not in response.text


async def test_generations_run_one_at_a_time_on_the_worker_thread_in_order() -> None:
    model = FakeModel()
    async with serve(settings(queue_limit=5), loader_for(model)) as client:
        await wait_status(client, "ready")
        model.gate.clear()
        model.started.clear()
        first = asyncio.create_task(client.post("/v1/images/generations", json={"prompt": "p0"}))
        await asyncio.to_thread(model.started.wait, 30)
        rest = []
        for i in range(1, 4):
            rest.append(
                asyncio.create_task(client.post("/v1/images/generations", json={"prompt": f"p{i}"}))
            )
            await wait_admitted(client, i + 1)  # queued before the next is sent
        # The first is blocked in the pipeline on the worker thread; /health still answers.
        health = await client.get("/health")
        assert health.status_code == 200 and not first.done()
        model.gate.set()
        responses = await asyncio.gather(first, *rest)
    assert [r.status_code for r in responses] == [200] * 4
    assert [j.prompt for j in model.jobs[1:]] == ["p0", "p1", "p2", "p3"]
    assert len(model.threads) == 1 and next(iter(model.threads)).startswith("imageserver-gpu")


async def test_a_full_queue_answers_429_with_retry_after() -> None:
    model = FakeModel()
    async with serve(settings(queue_limit=1), loader_for(model)) as client:
        await wait_status(client, "ready")
        model.gate.clear()
        model.started.clear()
        running = asyncio.create_task(client.post("/v1/images/generations", json={"prompt": "a"}))
        await asyncio.to_thread(model.started.wait, 30)
        waiting = asyncio.create_task(client.post("/v1/images/generations", json={"prompt": "b"}))
        await wait_admitted(client, 2)
        app_worker = client._transport.app.state.worker  # type: ignore[attr-defined]
        refused = await client.post("/v1/images/generations", json={"prompt": "c"})
        error = assert_envelope(refused, 429, "queue_full")
        assert error["type"] == "rate_limit_error"
        assert int(refused.headers["Retry-After"]) >= 1
        model.gate.set()
        assert [r.status_code for r in await asyncio.gather(running, waiting)] == [200, 200]
        assert app_worker.admitted == 0
        assert (
            await client.post("/v1/images/generations", json={"prompt": "d"})
        ).status_code == 200


async def test_with_an_upstream_key_every_path_needs_it() -> None:
    """The manager's per-start key (HOMELAB_IMAGE_API_KEY): only the proxy, which got it in
    its lease, may use the server, on any path (issue 23: /health, the OpenAPI document
    and unknown paths too, before routing); the manager's probe sends it."""
    key = "upstream-" + "k3Y9" * 8
    auth = {"Authorization": f"Bearer {key}"}
    async with serve(settings(api_key=key), loader_for(FakeModel())) as client:
        await wait_status(client, "ready", auth)
        body = {"prompt": "a cat", "size": "64x64", "response_format": "b64_json"}
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": key}):
            refused = await client.post("/v1/images/generations", json=body, headers=headers)
            assert_envelope(refused, 401, "invalid_api_key")
            assert refused.headers["WWW-Authenticate"] == "Bearer"
        document = await client.get("/openapi.json", headers=auth)
        paths = set(document.json()["paths"]) | {"/openapi.json", "/docs", "/", "/no-such-path"}
        assert {"/health", "/v1/models", "/v1/progress", "/v1/images/edits"} <= paths
        for path in sorted(paths):
            for method in ("GET", "POST", "OPTIONS"):
                refused = await client.request(method, path)
                assert refused.status_code == 401, (method, path, refused.text)
        done = await client.post("/v1/images/generations", json=body, headers=auth)
        assert done.status_code == 200, done.text
        assert (await client.get("/v1/models", headers=auth)).status_code == 200
        assert (await client.get("/health", headers=auth)).json()["status"] == "ready"


async def test_steps_above_the_models_max_steps_are_refused() -> None:
    model = FakeModel()
    async with serve(settings(steps=4, max_steps=8), loader_for(model)) as client:
        await wait_status(client, "ready")
        refused = await client.post("/v1/images/generations", json={"prompt": "p", "steps": 9})
        allowed = await client.post("/v1/images/generations", json={"prompt": "p", "steps": 8})
    assert_envelope(refused, 400, "invalid_request", "steps")
    assert allowed.status_code == 200 and model.jobs[-1].steps == 8


class LeavingClient:
    """Drives the ASGI app directly, as a client that can hang up while it waits."""

    def __init__(self, app, body: dict) -> None:
        import json

        self.app, self.body = app, json.dumps(body).encode()
        self.leave = asyncio.Event()
        self.sent: list[dict] = []
        self._body_sent = False

    async def receive(self) -> dict:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def start(self) -> asyncio.Task:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/images/generations",
            "raw_path": b"/v1/images/generations",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"imageserver")],
            "client": ("127.0.0.1", 1),
            "server": ("imageserver", 80),
        }
        return asyncio.create_task(self.app(scope, self.receive, self.send))


async def test_a_queued_generation_whose_client_left_is_dropped() -> None:
    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        model.jobs.clear()
        model.gate.clear()
        app = client._transport.app  # type: ignore[attr-defined]
        running = asyncio.create_task(
            client.post("/v1/images/generations", json={"prompt": "first"})
        )
        await wait_admitted(client, 1)
        leaving = LeavingClient(app, {"prompt": "second"})
        task = leaving.start()
        await wait_admitted(client, 2)
        leaving.leave.set()
        await asyncio.wait_for(task, 10)
        await wait_admitted(client, 1)  # it left the queue at once
        model.gate.set()
        assert (await running).status_code == 200
    assert [job.prompt for job in model.jobs] == ["first"], "the dropped job must never run"


async def test_a_running_generation_whose_client_left_stops_at_its_next_step() -> None:
    model = FakeModel()
    async with serve(settings(), loader_for(model)) as client:
        await wait_status(client, "ready")
        model.started.clear()
        model.gate.clear()
        leaving = LeavingClient(client._transport.app, {"prompt": "long"})  # type: ignore[attr-defined]
        task = leaving.start()
        await asyncio.to_thread(model.started.wait, 10)
        leaving.leave.set()
        await asyncio.wait_for(task, 10)
        await wait_admitted(client, 0)  # the worker is free without the gate opening
    assert [job.prompt for job in model.stopped] == ["long"]
    model.gate.set()
