"""The manager's HTTP API over a real scheduler with fakes: auth, routes, envelopes, SSE."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from manager_fakes import catalogue, until

from manager.api import MAX_BODY_BYTES, create_app
from manager.budget import GpuBudget
from manager.errors import RuntimeFailure
from manager.scheduler import Scheduler, SchedulerConfig
from manager.settings import ManagerSettings
from manager.state import ModelState

TOKEN = "k9F2-pQx7_LmZr4Ws8Tb"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_settings(**overrides) -> ManagerSettings:
    values = {"manager_token": TOKEN, "sse_heartbeat": 0.05}
    return ManagerSettings(**(values | overrides))


def client_for(app, headers=AUTH) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://manager", headers=headers)


@pytest.fixture
async def app(sched):
    return create_app(sched, make_settings(), manage_scheduler=False)


@pytest.fixture
async def api(app):
    async with client_for(app) as client:
        yield client


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "source"}
    assert error["source"] == "manager"
    assert error["message"]
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    return error


# ---------------------------------------------------------------- auth

PROTECTED = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/leases", {"model": "alpha"}),
    ("POST", "/v1/leases/abc/renew", None),
    ("DELETE", "/v1/leases/abc", None),
    ("POST", "/v1/models/alpha/ensure", None),
    ("POST", "/v1/models/alpha/stop", None),
    ("GET", "/v1/models/alpha/logs", None),
    ("GET", "/v1/events", None),
    ("GET", "/openapi.json", None),
]


async def test_healthz_needs_no_token(app):
    async with client_for(app, headers={}) as anonymous:
        response = await anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
    ids=["missing", "wrong", "longer", "basic", "no-scheme"],
)
async def test_every_route_but_healthz_needs_the_token(app, runtime, method, path, body, headers):
    async with client_for(app, headers=headers) as client:
        response = await client.request(method, path, json=body)
    error = assert_envelope(response, 401, "invalid_api_key")
    assert error["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"
    assert runtime.calls == []  # nothing happened


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/v1/leases", b"{not json"),
        ("POST", "/v1/models/gamma/ensure", b""),
        ("GET", "/v1/models/alpha/logs?tail=0", b""),
        ("GET", "/v1/nothing-here", b""),
    ],
)
async def test_the_token_is_checked_before_the_request_is(app, method, path, content):
    async with client_for(app, headers={}) as anonymous:
        response = await anonymous.request(method, path, content=content)
    if path == "/v1/nothing-here":
        assert_envelope(response, 404)  # no route: nothing to protect, nothing revealed
    else:
        assert_envelope(response, 401, "invalid_api_key")
        assert "gamma" not in response.text


# ---------------------------------------------------------------- models and leases


async def test_list_models(api):
    response = await api.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["alpha", "beta", "pix"]
    first = body["data"][0]
    assert set(first) == {
        "id",
        "object",
        "type",
        "state",
        "last_error",
        "last_used",
        "since",
        "in_flight",
        "waiting",
        "description",
        "vision",
        "tools",
        "gpu_memory_mib",
        "observed_gpu_memory_mib",
        "priority",
        "pinned",
        "backend",
        "warm_level",
        "host_memory_mib",
        "wake_seconds",
        "load_seconds",
    }
    assert first["warm_level"] is None  # not kept warm (models.json has no `warm`)
    assert first["backend"] == "vllm" and body["data"][2]["backend"] == "diffusers"
    assert first["vision"] is False  # text models say whether they take images
    assert first["tools"] is False  # ... and whether they call tools (models.json tool_calls)
    assert body["data"][1]["tools"] is True
    assert "vision" not in body["data"][2] and "tools" not in body["data"][2]
    assert body["data"][2]["sizes"] == ["512x512", "768x768"]
    assert body["data"][2]["max_n"] == 2
    assert "gpu_budget_mib" not in body  # no budget: one model at a time


async def test_the_list_carries_the_gpu_budget_for_the_proxys_placement(
    runtime, probe, clock, config, gpu
):
    sched = Scheduler(
        catalogue(),
        runtime,
        probe,
        config,
        clock=clock,
        gpu_released=gpu,
        budget=GpuBudget(20_000, 24_000, "test"),
    )
    try:
        app = create_app(sched, make_settings(), manage_scheduler=False)
        async with client_for(app) as client:
            body = (await client.get("/v1/models")).json()
    finally:
        await sched.close()
    assert body["gpu_budget_mib"] == 20_000


async def test_lease_lifecycle(api, sched):
    response = await api.post("/v1/leases", json={"model": "alpha", "extra": "ignored"})
    assert response.status_code == 200, response.text
    lease = response.json()
    assert set(lease) == {
        "lease_id",
        "model",
        "type",
        "base_url",
        "ttl",
        "max_uses",
        "max_concurrent",
        "api_key",
    }
    # The key the runtime made when it started the server (see FakeRuntime.start).
    assert lease["api_key"] == sched.runtime.instances["alpha"].api_key is not None
    assert (lease["model"], lease["type"], lease["base_url"], lease["max_uses"]) == (
        "alpha",
        "text",
        "http://127.0.0.1:18001",
        0,  # nobody else waits: the proxy may share it until contention begins
    )
    assert lease["max_concurrent"] == sched.config.batch_bound
    assert sched.model_status("alpha").in_flight == 1

    renewed = await api.post(f"/v1/leases/{lease['lease_id']}/renew")
    assert renewed.status_code == 200
    assert renewed.json() == {
        "lease_id": lease["lease_id"],
        "ttl": lease["ttl"],
        "contended": False,
    }

    gone = await api.delete(f"/v1/leases/{lease['lease_id']}")
    assert gone.status_code == 204
    assert sched.model_status("alpha").in_flight == 0

    again = await api.delete(f"/v1/leases/{lease['lease_id']}")
    assert assert_envelope(again, 404, "lease_not_found")["param"] == "lease_id"
    assert_envelope(await api.post(f"/v1/leases/{lease['lease_id']}/renew"), 404, "lease_not_found")


async def test_a_renewal_says_contended_while_another_model_waits(api, sched):
    lease = (await api.post("/v1/leases", json={"model": "alpha"})).json()
    beta = asyncio.create_task(sched.acquire("beta"))
    for _ in range(200):
        if sched.model_status("beta").waiting:
            break
        await asyncio.sleep(0.01)
    renewed = await api.post(f"/v1/leases/{lease['lease_id']}/renew")
    assert renewed.status_code == 200
    assert renewed.json()["contended"] is True
    assert (await api.delete(f"/v1/leases/{lease['lease_id']}")).status_code == 204
    sched.release((await asyncio.wait_for(beta, 5)).lease_id)


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
async def test_lease_body_is_read_as_json_whatever_the_content_type(api, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = await api.post("/v1/leases", content=b'{"model": "beta"}', headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "beta"


async def test_lease_for_an_unknown_model_is_404_listing_the_known(api, runtime):
    error = assert_envelope(
        await api.post("/v1/leases", json={"model": "gamma"}), 404, "model_not_found"
    )
    assert error["param"] == "model"
    assert "alpha, beta, pix" in error["message"]
    assert runtime.calls == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/models/gamma/ensure"),
        ("POST", "/v1/models/gamma/stop"),
        ("GET", "/v1/models/gamma/logs?tail=999999"),
    ],
)
async def test_model_paths_check_the_catalogue_first(api, runtime, method, path):
    error = assert_envelope(await api.request(method, path), 404, "model_not_found")
    assert "known models: alpha, beta, pix" in error["message"]
    assert runtime.calls == []


async def test_ensure_and_stop(api, sched, runtime):
    response = await api.post("/v1/models/pix/ensure")
    assert response.status_code == 200
    assert response.json() == {
        "model": "pix",
        "state": "ready",
        "base_url": "http://127.0.0.1:18003",
    }
    assert sched.model_status("pix").in_flight == 0
    response = await api.post("/v1/models/pix/stop")
    assert response.json() == {"model": "pix", "state": "stopped"}
    assert runtime.calls == [("start", "pix"), ("stop", "pix")]


async def test_logs_are_plain_text_and_tail_is_bounded(api, runtime):
    runtime.log_lines["alpha"] = [f"line {i}" for i in range(10)]
    response = await api.get("/v1/models/alpha/logs", params={"tail": 3})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "line 7\nline 8\nline 9"
    assert (await api.get("/v1/models/alpha/logs", params={"tail": 5000})).status_code == 200
    for bad in (0, 5001, "x"):
        error = assert_envelope(await api.get("/v1/models/alpha/logs", params={"tail": bad}), 400)
        assert error["param"] == "tail"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"nope": 1}', "model"),
        (b'{"model": ""}', "model"),
        (b'{"model": 5}', "model"),
        (b"{not json", None),
        (b"[]", None),
    ],
)
async def test_bad_lease_bodies_are_400_envelopes_like_the_other_programs(api, content, param):
    response = await api.post(
        "/v1/leases", content=content, headers={"content-type": "application/json"}
    )
    error = assert_envelope(response, 400, "invalid_request")
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param


async def test_unknown_route_and_wrong_method_are_envelopes(api):
    assert_envelope(await api.get("/v1/nothing"), 404, "not_found")
    response = await api.get("/v1/leases")
    assert_envelope(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


async def test_oversized_bodies_are_413_envelopes(api):
    big = json.dumps({"model": "alpha", "pad": "x" * MAX_BODY_BYTES}).encode()
    assert_envelope(await api.post("/v1/leases", content=big), 413, "request_too_large")

    async def chunks():
        yield b'{"model": "alpha", "pad": "'
        for _ in range(MAX_BODY_BYTES // 512 + 1):
            yield b"x" * 512
        yield b'"}'

    chunked = await api.post(
        "/v1/leases", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_envelope(chunked, 413)


async def test_queue_full_is_429_with_retry_after(runtime, probe):
    sched = Scheduler(catalogue(), runtime, probe, SchedulerConfig(queue_limit=1))
    app = create_app(sched, make_settings(), manage_scheduler=False)
    try:
        async with client_for(app) as api:
            probe.hold("alpha")
            first = asyncio.create_task(api.post("/v1/leases", json={"model": "alpha"}))
            await until(lambda: sched.waiting_count() == 1, "the first request to queue")
            response = await api.post("/v1/leases", json={"model": "beta"})
            error = assert_envelope(response, 429, "busy")
            assert error["type"] == "rate_limit_error"
            assert int(response.headers["retry-after"]) >= 1
            probe.release("alpha")
            assert (await first).status_code == 200
    finally:
        await sched.close()


async def test_failed_start_is_503_with_reason_exit_code_and_logs(api, probe):
    probe.fail_next(
        "alpha",
        "Engine core initialization failed",
        exit_code=3,
        logs="loading weights\nCUDA out of memory",
    )
    response = await api.post("/v1/leases", json={"model": "alpha"})
    error = assert_envelope(response, 503, "model_start_failed")
    assert "Engine core initialization failed" in error["message"]
    assert "exit code 3" in error["message"]
    assert "CUDA out of memory" in error["message"]
    models = (await api.get("/v1/models")).json()["data"]
    assert models[0]["state"] == "failed"
    assert "exit code 3" in models[0]["last_error"]


async def test_runtime_failure_is_503(api, runtime, monkeypatch):
    async def broken(name, spec, tail=100):
        raise RuntimeFailure("Docker engine is not reachable")

    monkeypatch.setattr(runtime, "logs", broken)
    error = assert_envelope(await api.get("/v1/models/alpha/logs"), 503, "runtime_error")
    assert "not reachable" in error["message"]


async def test_an_unexpected_error_is_a_500_envelope_without_traceback(api, runtime, monkeypatch):
    async def buggy(name, spec, tail=100):
        raise ValueError("secret internals")

    monkeypatch.setattr(runtime, "logs", buggy)
    response = await api.get("/v1/models/alpha/logs")
    assert_envelope(response, 500, "internal_error")
    assert "secret internals" not in response.text


async def test_openapi_document_is_served_with_the_token(api):
    response = await api.get("/openapi.json")
    assert response.status_code == 200
    assert "/v1/leases" in response.json()["paths"]


# ---------------------------------------------------------------- raw ASGI: disconnects and SSE


class AsgiCall:
    """Drive the ASGI app directly to see response chunks as they are sent, and to hang up."""

    def __init__(self, app, method: str, path: str, body: bytes = b"") -> None:
        self.app, self.body = app, body
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"manager"),
                (b"authorization", f"Bearer {TOKEN}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("manager", 80),
        }
        self.sent: asyncio.Queue[dict] = asyncio.Queue()
        self.hangup = asyncio.Event()
        self._body_sent = False
        self.task: asyncio.Task | None = None

    async def _receive(self) -> dict:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.hangup.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict) -> None:
        await self.sent.put(message)

    def start(self) -> AsgiCall:
        self.task = asyncio.create_task(self.app(self.scope, self._receive, self._send))
        return self

    async def next_message(self) -> dict:
        async with asyncio.timeout(10):  # a hang guard, not a timing assertion
            return await self.sent.get()

    async def read_until(self, needle: bytes) -> bytes:
        seen = b""
        while needle not in seen:
            message = await self.next_message()
            assert message["type"] == "http.response.body"
            seen += message.get("body", b"")
        return seen


async def test_a_client_that_hangs_up_leaves_the_queue(app, sched, probe):
    probe.hold("alpha")
    call = AsgiCall(app, "POST", "/v1/leases", json.dumps({"model": "alpha"}).encode()).start()
    await until(lambda: sched.waiting_count() == 1, "the request to queue")
    call.hangup.set()
    # Well before the queue timeout (300 s): the hang-up itself ends the wait.
    await until(lambda: call.task.done(), "the request to end after the hang-up")
    assert sched.waiting_count() == 0
    probe.release("alpha")
    await until(lambda: sched.state("alpha") is ModelState.READY, "alpha ready")
    assert sched.model_status("alpha").in_flight == 0  # no lease leaked to the departed client


def parse_sse(raw: bytes) -> list[tuple[str, object]]:
    events = []
    for frame in raw.decode().split("\n\n"):
        if frame.startswith("event: "):
            name_line, data_line = frame.split("\n", 1)
            events.append((name_line[len("event: ") :], json.loads(data_line[len("data: ") :])))
        elif frame.startswith(":"):
            events.append(("comment", frame))
    return events


async def test_events_stream_starts_with_a_snapshot_then_state_and_swap_events(app, sched):
    call = AsgiCall(app, "GET", "/v1/events").start()
    start = await call.next_message()
    assert start["status"] == 200
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-accel-buffering"] == "no"
    first = parse_sse(await call.read_until(b"\n\n"))
    assert first[0][0] == "snapshot"
    assert [m["id"] for m in first[0][1]] == ["alpha", "beta", "pix"]  # a list of ModelStatus

    await sched.acquire("alpha")
    raw = await call.read_until(b'"state":"ready"')
    events = [e for e in parse_sse(raw) if e[0] != "comment"]
    assert events[0] == (
        "state",
        {
            "model": "alpha",
            "state": "starting",
            "previous": "stopped",
            "at": events[0][1]["at"],
            "error": None,
        },
    )
    assert events[1][0] == "swap" and events[1][1]["to"] == "alpha" and events[1][1]["from"] is None
    assert events[2][1]["state"] == "ready"
    call.hangup.set()
    await call.task
    assert sched.events.subscriber_count == 0


async def test_events_stream_sends_heartbeats_and_ends_when_the_manager_closes(app, sched):
    call = AsgiCall(app, "GET", "/v1/events").start()
    await call.next_message()
    await call.read_until(b"event: snapshot")
    assert b": keepalive" in await call.read_until(b": keepalive")
    await sched.close()
    async with asyncio.timeout(10):
        await call.task
    assert sched.events.subscriber_count == 0


async def test_lifespan_adopts_on_start_and_closes_on_shutdown(runtime, probe):
    from manager.runtime import spec_hash

    runtime.put("alpha", hash_=spec_hash(catalogue().models["alpha"]))
    sched = Scheduler(catalogue(), runtime, probe)
    app = create_app(sched, make_settings())
    async with app.router.lifespan_context(app):
        await until(lambda: sched.state("alpha") is ModelState.READY, "adoption")
    with pytest.raises(RuntimeFailure, match="shutting down"):
        await sched.acquire("alpha")
    assert runtime.running() == ["alpha"]  # left running for the next manager


async def test_healthz_and_status_answer_while_a_lease_request_blocks(app, sched, probe):
    probe.hold("alpha")
    async with client_for(app) as api:
        pending = asyncio.create_task(api.post("/v1/leases", json={"model": "alpha"}))
        await until(lambda: sched.waiting_count() == 1, "a blocked lease request")
        assert (await api.get("/healthz")).status_code == 200
        assert (await api.get("/v1/models")).json()["data"][0]["waiting"] == 1
        probe.release("alpha")
        assert (await pending).status_code == 200


async def test_event_streams_beyond_the_cap_get_a_429(sched):
    """Each stream holds a connection (a descriptor) in the manager, whose Docker calls and
    leases need descriptors too: HOMELAB_MAX_EVENT_STREAMS bounds them."""
    app = create_app(sched, make_settings(max_event_streams=2), manage_scheduler=False)
    calls = [AsgiCall(app, "GET", "/v1/events").start() for _ in range(2)]
    for call in calls:
        assert (await call.next_message())["status"] == 200
    assert sched.events.subscriber_count == 2
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://manager", headers=AUTH
    ) as client:
        refused = await client.get("/v1/events")
        assert refused.status_code == 429
        assert refused.json()["error"]["source"] == "manager"
        assert refused.headers["Retry-After"]
    calls[0].hangup.set()
    await calls[0].task
    again = AsgiCall(app, "GET", "/v1/events").start()
    assert (await again.next_message())["status"] == 200
    for call in (calls[1], again):
        call.hangup.set()
        await call.task


async def test_a_lease_request_names_its_key_and_the_metrics_show_it_by_name(api, app):
    """The fair share's contract: a lease request carries the key's name and class (never
    the key), and `GET /metrics` (token only) shows the leases by model, class and name."""
    r = await api.post("/v1/leases", json={"model": "alpha", "key_name": "ann", "key_class": "low"})
    assert r.status_code == 200, r.text
    bad = await api.post("/v1/leases", json={"model": "alpha", "key_class": "urgent"})
    assert_envelope(bad, 400, "invalid_request")
    metrics = await api.get("/metrics")
    assert metrics.status_code == 200
    assert 'homelab_manager_leases{key="ann",key_class="low",model="alpha"} 1.0' in metrics.text
    async with client_for(app, headers={}) as anonymous:
        assert_envelope(await anonymous.get("/metrics"), 401, "invalid_api_key")
    await api.delete(f"/v1/leases/{r.json()['lease_id']}")
