"""The UI contract: the page with its config, static files, and the event relay."""

from __future__ import annotations

import asyncio
import json

import pytest
from proxy_stack import API_KEY, Stack

TEMPLATE = (
    "<html><script>const CONFIG = {{ config|tojson }};</script><p>{{ config.version }}</p></html>"
)


async def test_index_without_template_is_a_503_envelope(stack: Stack) -> None:
    r = await stack.client.get("/")
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "ui_missing" and "index.html" in err["message"]


@pytest.mark.parametrize("keys", [[], [API_KEY]])
async def test_index_renders_config(make_stack, tmp_path, keys) -> None:
    (tmp_path / "app" / "templates").mkdir(parents=True)
    (tmp_path / "app" / "templates" / "index.html").write_text(TEMPLATE)
    async with make_stack(api_keys=keys, default_model="chat-b") as stack:
        r = await stack.client.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        embedded = r.text.split("const CONFIG = ")[1].split(";</script>")[0]
        config = json.loads(embedded)
        assert config["auth_required"] is bool(keys)
        assert config["default_model"] == "chat-b"
        assert isinstance(config["version"], str) and config["version"]


async def test_static_files_are_served_and_missing_ones_are_404_envelopes(
    make_stack, tmp_path
) -> None:
    (tmp_path / "app" / "static").mkdir(parents=True)
    (tmp_path / "app" / "static" / "main.js").write_text("// @ts-check\nexport const x = 1;\n")
    async with make_stack() as stack:
        r = await stack.client.get("/static/main.js")
        assert r.status_code == 200 and "export const x" in r.text
        r = await stack.client.get("/static/nope.js")
        assert r.status_code == 404 and r.json()["error"]["source"] == "proxy"
        r = await stack.client.get("/static/../../etc/passwd")
        assert r.status_code == 404


async def _read_event(lines, want: str) -> dict:
    event = None
    async for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == want:
            return json.loads(line[6:])
    raise AssertionError(f"stream ended before a {want} event")


async def test_events_come_from_one_shared_manager_stream(stack: Stack) -> None:
    """Every /api/events client is fed from the proxy's one manager stream: a snapshot
    first (with the states the events since brought), then the events."""
    for _ in range(300):  # the hub connects at start-up
        if stack.manager.subscribers:
            break
        await asyncio.sleep(0.01)
    assert len(stack.manager.subscribers) == 1
    async with (
        stack.client.stream("GET", "/api/events") as r,
        stack.client.stream("GET", "/api/events") as r2,
    ):
        assert r.status_code == 200 and r2.status_code == 200
        assert r.headers["x-accel-buffering"] == "no"
        lines, lines2 = r.aiter_lines(), r2.aiter_lines()
        snapshot = await asyncio.wait_for(_read_event(lines, "snapshot"), 10)
        assert {m["id"] for m in snapshot} == {"chat-a", "chat-b", "img", "emb"}
        await asyncio.wait_for(_read_event(lines2, "snapshot"), 10)
        assert len(stack.manager.subscribers) == 1
        assert (
            await stack.client.post("/v1/completions", json={"model": "chat-b", "prompt": "x"})
        ).status_code == 200
        swap = await asyncio.wait_for(_read_event(lines, "swap"), 10)
        assert swap["to"] == "chat-b"
        assert (await asyncio.wait_for(_read_event(lines2, "swap"), 10))["to"] == "chat-b"
    async with stack.client.stream("GET", "/api/events") as r3:
        late = await asyncio.wait_for(_read_event(r3.aiter_lines(), "snapshot"), 10)
        assert {m["id"]: m["state"] for m in late}["chat-b"] == "ready"
    assert len(stack.manager.subscribers) == 1, "browsers come and go; the manager stream stays"


async def test_event_clients_beyond_the_cap_get_a_503(make_stack) -> None:
    async with make_stack(max_event_clients=2) as stack:
        for _ in range(300):
            if stack.manager.subscribers:
                break
            await asyncio.sleep(0.01)
        async with (
            stack.client.stream("GET", "/api/events") as r1,
            stack.client.stream("GET", "/api/events") as r2,
        ):
            assert r1.status_code == 200 and r2.status_code == 200
            third = await stack.client.get("/api/events")
            assert third.status_code == 503
            assert third.json()["error"]["code"] == "too_many_event_clients"
        # Closed streams free their places.
        for _ in range(300):
            async with stack.client.stream("GET", "/api/events") as again:
                if again.status_code == 200:
                    break
            await asyncio.sleep(0.01)
        assert again.status_code == 200
