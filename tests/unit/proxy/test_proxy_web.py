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


async def test_events_relay_passes_the_manager_stream_through(stack: Stack) -> None:
    async with stack.client.stream("GET", "/api/events") as r:
        assert r.status_code == 200
        assert r.headers["x-accel-buffering"] == "no"
        lines = r.aiter_lines()
        snapshot = await asyncio.wait_for(_read_event(lines, "snapshot"), 10)
        assert {m["id"] for m in snapshot} == {"chat-a", "chat-b", "img"}
        subscribers = len(stack.manager.subscribers)
        assert (
            await stack.client.post("/v1/completions", json={"model": "chat-b", "prompt": "x"})
        ).status_code == 200
        swap = await asyncio.wait_for(_read_event(lines, "swap"), 10)
        assert swap["to"] == "chat-b"
    for _ in range(300):
        if len(stack.manager.subscribers) < subscribers:
            break
        await asyncio.sleep(0.01)
    assert len(stack.manager.subscribers) < subscribers, (
        "closing the relay must close the manager stream"
    )
