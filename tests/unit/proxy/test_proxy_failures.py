"""Failures on every side of the proxy, and what the client sees: always an envelope."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from proxy_fakes import dead_port
from proxy_stack import API_KEY, Stack


async def _eventually(predicate, what: str, tries: int = 300) -> None:
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def chat(text: str, **extra) -> dict:
    return {"model": "chat-a", "messages": [{"role": "user", "content": text}], **extra}


async def test_upstream_500_in_old_vllm_shape_becomes_502_from_model_server(stack: Stack) -> None:
    r = await stack.client.post("/v1/chat/completions", json=chat("fail"))
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["source"] == "model_server" and err["message"] == "engine exploded"
    assert err["type"] == "server_error"
    await _eventually(lambda: stack.manager.leases == {}, "lease released after an upstream error")


async def test_upstream_400_in_new_vllm_shape_keeps_status_and_param(stack: Stack) -> None:
    r = await stack.client.post("/v1/chat/completions", json=chat("bad"))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err == {
        "message": "messages are bad",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "400",
        "source": "model_server",
    }


async def test_upstream_dying_mid_stream_ends_with_an_error_event(stack: Stack) -> None:
    async with stack.client.stream(
        "POST", "/v1/chat/completions", json=chat("die now please", stream=True)
    ) as r:
        assert r.status_code == 200
        text = (await r.aread()).decode()
    events = [e for e in text.split("\n\n") if e]
    assert len(events) == 3, events
    assert "[DONE]" not in text
    last = orjson.loads(events[-1].removeprefix("data: "))
    assert (
        last["error"]["source"] == "model_server" and last["error"]["code"] == "stream_interrupted"
    )
    await _eventually(lambda: stack.manager.leases == {}, "lease released after a broken stream")


async def test_unreachable_model_server_is_502(stack: Stack) -> None:
    with dead_port() as port:
        stack.manager.base_url = f"http://127.0.0.1:{port}"
        r = await stack.client.post("/v1/chat/completions", json=chat("hi"))
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["source"] == "model_server" and err["code"] == "model_server_unreachable"


async def test_an_unreachable_model_server_drops_the_shared_lease(make_stack) -> None:
    async with make_stack(lease_linger=30.0) as stack:
        live = stack.manager.base_url
        with dead_port() as port:
            stack.manager.base_url = f"http://127.0.0.1:{port}"  # the server died
            r = await stack.client.post("/v1/chat/completions", json=chat("hi"))
            assert r.status_code == 502
            assert r.json()["error"]["code"] == "model_server_unreachable"
        # Tried twice (the retry), each time on a fresh lease, each reported to the manager.
        assert stack.manager.checked == ["chat-a", "chat-a"]
        broken = list(stack.manager.granted_ids)  # the two leases granted so far
        assert len(broken) == 2, broken
        # Not kept for 30 s: released at once, so nobody else rides on it.
        await _eventually(lambda: len(stack.manager.released) == 2, "the broken leases released")
        assert sorted(stack.manager.released) == sorted(broken)
        assert stack.manager.leases == {}
        stack.manager.base_url = live  # the model is back (e.g. restarted elsewhere)
        r = await stack.client.post("/v1/chat/completions", json=chat("hi"))
        assert r.status_code == 200, "a fresh lease, not the broken one"
        assert stack.manager.granted == 3


async def test_a_request_to_a_dead_server_is_retried_once_after_the_manager_checked(
    stack: Stack,
) -> None:
    live = stack.manager.base_url
    with dead_port() as port:
        stack.manager.base_url = f"http://127.0.0.1:{port}"  # the server died
        stack.manager.restart_on_check = live  # the manager's check restarts it
        r = await stack.client.post("/v1/chat/completions", json=chat("hi"))
    assert r.status_code == 200, r.text
    assert stack.manager.checked == ["chat-a"] and stack.manager.granted == 2


async def test_no_retry_for_endpoints_left_out_of_the_setting(make_stack) -> None:
    async with make_stack(retry_endpoints="") as stack:
        live = stack.manager.base_url
        with dead_port() as port:
            stack.manager.base_url = f"http://127.0.0.1:{port}"
            stack.manager.restart_on_check = live
            r = await stack.client.post("/v1/chat/completions", json=chat("hi"))
        assert r.status_code == 502
        assert stack.manager.checked == ["chat-a"] and stack.manager.granted == 1


async def test_manager_busy_is_429_with_retry_after(stack: Stack) -> None:
    stack.manager.busy = True
    r = await stack.client.post("/v1/chat/completions", json=chat("hi"))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"
    assert r.json()["error"]["source"] == "manager"


async def test_failed_start_is_503_from_manager(stack: Stack) -> None:
    stack.manager.fail_start.add("emb")
    r = await stack.client.post("/v1/embeddings", json={"model": "emb", "input": "x"})
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["source"] == "manager" and "failed to start" in err["message"]


async def test_manager_down_is_503_and_not_ready(make_stack) -> None:
    with dead_port() as port:
        async with make_stack(
            manager_url=f"http://127.0.0.1:{port}", manager_outage_window=0
        ) as stack:
            r = await stack.client.post("/v1/chat/completions", json=chat("hi"))
            assert r.status_code == 503
            assert r.json()["error"]["source"] == "manager"
            assert r.json()["error"]["code"] == "manager_unavailable"
            assert (await stack.client.get("/v1/models")).status_code == 503
            assert (await stack.client.get("/healthz")).status_code == 200
            ready = await stack.client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["error"]["source"] == "manager"


async def test_wrong_manager_token_is_502_not_401(make_stack) -> None:
    async with make_stack(manager_token="Wr0ng-But-L0ng-Enough-9x") as stack:
        r = await stack.client.get("/v1/models")
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "manager_misconfigured"


async def test_ready_when_the_manager_answers(stack: Stack) -> None:
    r = await stack.client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


async def test_slow_stream_first_chunk_arrives_before_upstream_finishes(stack: Stack) -> None:
    async with stack.client.stream(
        "POST", "/v1/chat/completions", json=chat("slow", stream=True)
    ) as r:
        chunks = r.aiter_raw()
        first = await asyncio.wait_for(chunks.__anext__(), 10)
        assert first.startswith(b"data: ") and b"echo" in first
        assert not stack.upstream.finished.is_set()
        stack.upstream.gate.set()
        rest = b"".join([c async for c in chunks])
    assert rest.endswith(b"data: [DONE]\n\n")
    assert stack.upstream.finished.is_set()


async def test_client_disconnect_mid_stream_closes_upstream_and_releases_lease(
    stack: Stack,
) -> None:
    async with stack.client.stream(
        "POST", "/v1/chat/completions", json=chat("slow", stream=True)
    ) as r:
        chunks = r.aiter_raw()  # keep a reference: a collected iterator closes the response
        await asyncio.wait_for(chunks.__anext__(), 10)
        assert len(stack.manager.leases) == 1
    # Leaving the block closed the client connection while the upstream waits on its gate.
    await asyncio.wait_for(stack.upstream.cancelled.wait(), 10)
    assert not stack.upstream.finished.is_set()
    await _eventually(lambda: stack.manager.leases == {}, "lease released after a disconnect")


async def test_client_disconnect_while_waiting_for_a_swap_withdraws_the_lease_request(
    make_stack,
) -> None:
    async with make_stack(swap_delay=30.0) as stack:
        task = asyncio.create_task(stack.client.post("/v1/chat/completions", json=chat("hi")))
        await _eventually(lambda: stack.manager.states["chat-a"] == "starting", "swap started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _eventually(
            lambda: stack.manager.abandoned == 1, "manager saw the lease request go away"
        )
        assert stack.manager.granted == 0


async def test_long_request_renews_its_lease(make_stack) -> None:
    async with make_stack(ttl=0.2) as stack:
        async with stack.client.stream(
            "POST", "/v1/chat/completions", json=chat("slow", stream=True)
        ) as r:
            chunks = r.aiter_raw()
            await chunks.__anext__()
            await _eventually(lambda: len(stack.manager.renewed) >= 2, "lease renewed twice")
            stack.upstream.gate.set()
            rest = b"".join([c async for c in chunks])
            assert rest.endswith(b"data: [DONE]\n\n")
        await _eventually(lambda: stack.manager.leases == {}, "lease released")
        renewed = len(stack.manager.renewed)
        await asyncio.sleep(0.3)
        assert len(stack.manager.renewed) == renewed, "renewal must stop once the request is over"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/nope", {}, 404),
        ("GET", "/v1/chat/completions", {}, 405),
        (
            "POST",
            "/v1/chat/completions",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"content": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        (
            "POST",
            "/v1/embeddings",
            {"content": b"", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        ("POST", "/v1/embeddings", {"content": b'{"model": "x"}'}, 415),
        (
            "POST",
            "/v1/chat/completions",
            {"content": b"{}", "headers": {"Content-Type": "text/plain"}},
            415,
        ),
    ],
)
async def test_protocol_errors_are_envelopes(stack: Stack, method, path, kwargs, status) -> None:
    r = await stack.client.request(method, path, **kwargs)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["source"] == "proxy" and isinstance(err["message"], str)


async def test_oversize_json_body_is_413(make_stack) -> None:
    async with make_stack(proxy_max_body_bytes=1024) as stack:
        r = await stack.client.post("/v1/chat/completions", json=chat("x" * 2000))
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"

        # Without a Content-Length (chunked upload) the limit holds while reading.
        async def body():
            for _ in range(4):
                yield b" " * 512

        r = await stack.client.post(
            "/v1/chat/completions", content=body(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413


async def test_api_keys_guard_the_api_but_not_health_or_images(make_stack) -> None:
    from proxy_stack import API_KEY

    async with make_stack(api_keys=[API_KEY]) as stack:
        r = await stack.client.get("/v1/models")
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
        r = await stack.client.get(
            "/v1/models", headers={"Authorization": "Bearer wrong-key-123456789"}
        )
        assert r.status_code == 401
        assert (await stack.client.get("/metrics")).status_code == 401
        assert (await stack.client.get("/api/events")).status_code == 401
        assert (await stack.client.get("/healthz")).status_code == 200
        assert (await stack.client.get("/images/" + "a" * 32 + ".png")).status_code == 404
        ok = await stack.client.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200


async def test_metrics_count_requests_queue_wait_and_swaps(stack: Stack) -> None:
    await _eventually(
        lambda: len(stack.manager.subscribers) >= 1, "proxy follows the manager's events"
    )
    assert (
        await stack.client.post("/v1/completions", json={"model": "chat-a", "prompt": "x"})
    ).status_code == 200
    assert (
        await stack.client.post("/v1/completions", json={"model": "chat-b", "prompt": "x"})
    ).status_code == 200
    assert (
        await stack.client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    ).status_code == 404

    async def text() -> str:
        return (await stack.client.get("/metrics")).text

    for _ in range(200):
        if 'homelab_proxy_swaps_total{from_model="chat-a",to_model="chat-b"} 1.0' in await text():
            break
        await asyncio.sleep(0.01)
    body = await text()
    assert (
        'homelab_proxy_requests_total{endpoint="/v1/completions",model="chat-a",status="200"} 1.0'
        in body
    )
    assert (
        'homelab_proxy_requests_total{endpoint="/v1/completions",model="unknown",status="404"} 1.0'
        in body
    )
    assert 'homelab_proxy_queue_wait_seconds_count{model="chat-b"} 1.0' in body
    assert 'homelab_proxy_swaps_total{from_model="none",to_model="chat-a"} 1.0' in body
    assert 'homelab_proxy_swaps_total{from_model="chat-a",to_model="chat-b"} 1.0' in body
    assert "homelab_proxy_in_flight 0.0" in body


async def test_model_list_is_cached_not_fetched_per_request(stack: Stack) -> None:
    assert (
        await stack.client.post("/v1/completions", json={"model": "chat-a", "prompt": "x"})
    ).status_code == 200
    # The swap event comes after the state events of the first request's swap: once the
    # proxy has counted it, no invalidation from that swap is still on its way (a fixed
    # sleep was not enough on a loaded machine).
    for _ in range(300):
        metrics = (await stack.client.get("/metrics")).text
        if 'homelab_proxy_swaps_total{from_model="none",to_model="chat-a"} 1.0' in metrics:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the proxy never saw the swap event")
    await asyncio.sleep(0.05)
    before = stack.manager.model_fetches
    for _ in range(10):
        assert (
            await stack.client.post("/v1/completions", json={"model": "chat-a", "prompt": "x"})
        ).status_code == 200
    assert stack.manager.model_fetches - before <= 1


async def test_state_changes_show_in_models_list_without_waiting_for_the_cache(make_stack) -> None:
    async with make_stack(models_cache_ttl=3600) as stack:
        await _eventually(
            lambda: len(stack.manager.subscribers) >= 1, "proxy follows the manager's events"
        )
        states = {
            m["id"]: m["state"] for m in (await stack.client.get("/v1/models")).json()["data"]
        }
        assert states["chat-a"] == "stopped"
        assert (
            await stack.client.post("/v1/completions", json={"model": "chat-a", "prompt": "x"})
        ).status_code == 200
        for _ in range(200):
            states = {
                m["id"]: m["state"] for m in (await stack.client.get("/v1/models")).json()["data"]
            }
            if states["chat-a"] == "ready":
                break
            await asyncio.sleep(0.01)
        assert states["chat-a"] == "ready"


async def test_an_unexpected_exception_is_a_500_envelope_without_traceback(
    stack: Stack, monkeypatch
) -> None:
    from proxy import routes_openai

    async def boom(request):
        raise RuntimeError("secret internals")

    monkeypatch.setitem(routes_openai.FORWARDING, "/v1/embeddings", boom)
    r = await stack.client.post("/v1/embeddings", json={"model": "emb", "input": "x"})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["source"] == "proxy" and err["type"] == "server_error"
    assert "secret internals" not in r.text and "Traceback" not in r.text


async def test_an_exception_while_forwarding_is_a_500_envelope_too(
    stack: Stack, monkeypatch
) -> None:
    """The forwarding lane (proxy.hotpath.ProxyApp) skips FastAPI's own layers, not its 500."""
    from proxy.forward import Forward

    async def boom(self, send, watch):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Forward, "run", boom)
    r = await stack.client.post("/v1/chat/completions", json={"model": "chat-a", "messages": []})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["source"] == "proxy" and err["type"] == "server_error"
    assert "secret internals" not in r.text and "Traceback" not in r.text


async def test_keyless_clients_read_no_internal_addresses_or_log_lines(make_stack) -> None:
    """An open proxy (no keys) answers everyone on the LAN: its errors name no manager or
    model server address and carry no model log lines; key holders still get them."""
    with dead_port() as port:
        async with make_stack(
            manager_url=f"http://127.0.0.1:{port}", manager_outage_window=0
        ) as stack:
            for path in ("/readyz", "/v1/models"):
                err = (await stack.client.get(path)).json()["error"]
                assert f"127.0.0.1:{port}" not in err["message"] and "http://" not in err["message"]
                assert err["code"] == "manager_unavailable"
    async with make_stack() as stack:
        stack.manager.fail_start.add("emb")
        stack.manager.start_logs = "INFO loading /models/secret-path\nERROR boom"
        r = await stack.client.post("/v1/embeddings", json={"model": "emb", "input": "x"})
        message = r.json()["error"]["message"]
        assert r.status_code == 503 and "failed to start" in message
        assert "last log lines" not in message and "secret-path" not in message
        ready = (await stack.client.get("/readyz")).json()
        assert ready == {"status": "ready"}


async def test_key_holders_get_the_details(make_stack) -> None:
    with dead_port() as port:
        async with make_stack(
            manager_url=f"http://127.0.0.1:{port}", api_keys=[API_KEY], manager_outage_window=0
        ) as stack:
            auth = {"Authorization": f"Bearer {API_KEY}"}
            err = (await stack.client.get("/v1/models", headers=auth)).json()["error"]
            assert f"127.0.0.1:{port}" in err["message"]
            keyless = (await stack.client.get("/readyz")).json()["error"]
            assert f"127.0.0.1:{port}" not in keyless["message"]
            keyed = (await stack.client.get("/readyz", headers=auth)).json()["error"]
            assert f"127.0.0.1:{port}" in keyed["message"]
    async with make_stack(api_keys=[API_KEY]) as stack:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        assert (await stack.client.get("/readyz")).json() == {"status": "ready"}
        keyed = (await stack.client.get("/readyz", headers=auth)).json()
        assert keyed["manager"].startswith("http://127.0.0.1:")
