"""The MCP package's pure parts: tool schemas from a model list, argument checks, rising
progress, the event feed's load history, picture arguments and inline limits; and the
/mcp endpoint's own refusals (key, body limit) on the unit stack (proxy_stack.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from types import SimpleNamespace

import orjson
import pytest
from PIL import Image
from proxy_stack import API_KEY

from proxy.feed import EventFeed
from proxy.images import ImageStore
from proxy.mcp.handlers import cosine
from proxy.mcp.picture import INLINE_LIMIT, picture_content, read_image
from proxy.mcp.progress import Progress, wait_for_lease
from proxy.mcp.server import body_limit
from proxy.mcp.tools import (
    ArgumentError,
    ToolFailure,
    parse_embed,
    parse_img2img,
    parse_img2txt,
    parse_list_models,
    parse_txt2img,
    parse_txt2txt,
    tool_list,
)
from proxy.settings import ProxySettings
from tests.mcp_client import INITIALIZE
from wire.events import StateEvent, SwapEvent
from wire.models import ModelStatus

PARSE_ERROR = -32700
"""JSON-RPC's code for a body that is not JSON."""


def _status(name: str, kind: str, **extra: object) -> ModelStatus:
    return ModelStatus(id=name, type=kind, state="stopped", since=0.0, **extra)


MODELS = {
    "chat": _status("chat", "text", description="A chat model.", vision=False),
    "eyes": _status("eyes", "text", description="Sees.", vision=True),
    "sd": _status("sd", "image", sizes=["512x512", "768x512"], max_n=3),
    "xl": _status("xl", "image", sizes=["1024x1024"], max_n=1),
    "vec": _status("vec", "embedding", description="Sentence vectors."),
}


def _png(width: int = 4, height: int = 3) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_tools_are_generated_from_the_model_list() -> None:
    tools = {t.name: t for t in tool_list(MODELS)}
    assert set(tools) == {
        *("txt2txt", "txt2img", "img2img", "img2txt", "embed", "list_models"),
        *("speech2txt", "txt2speech"),
    }
    assert tools["txt2txt"].input_schema["properties"]["model"]["enum"] == ["chat", "eyes"]
    assert tools["embed"].input_schema["properties"]["model"]["enum"] == ["vec"]
    assert "- vec: Sentence vectors." in (tools["embed"].description or "")
    assert tools["embed"].input_schema["required"] == ["input"]
    assert tools["img2txt"].input_schema["properties"]["model"]["enum"] == ["eyes"]
    img = tools["txt2img"].input_schema["properties"]
    assert img["model"]["enum"] == ["sd", "xl"]
    assert img["size"]["enum"] == ["1024x1024", "512x512", "768x512"]
    assert img["n"]["maximum"] == 3
    assert "sizes 512x512, 768x512; max_n 3" in (tools["txt2img"].description or "")
    for tool in tools.values():
        assert tool.input_schema["additionalProperties"] is False
    assert "Served by the hosts" not in (tools["txt2txt"].description or "")  # one host


def test_a_model_of_several_hosts_is_offered_once_naming_its_hosts() -> None:
    several = {**MODELS, "chat": _status("chat", "text", hosts=["gpu-1", "gpu-2"])}
    chat = {t.name: t for t in tool_list(several)}["txt2txt"]
    assert chat.input_schema["properties"]["model"]["enum"] == ["chat", "eyes"]
    assert "- chat: (no description) Served by the hosts gpu-1, gpu-2." in (chat.description or "")


def test_img2txt_says_when_no_model_takes_images() -> None:
    models = {k: v for k, v in MODELS.items() if k != "eyes"}
    [tool] = [t for t in tool_list(models) if t.name == "img2txt"]
    assert "none" in (tool.description or "") and '"vision": true' in (tool.description or "")
    assert "enum" not in tool.input_schema["properties"]["model"]
    with pytest.raises(ToolFailure, match="No vision model is configured"):
        parse_img2txt(models, {"image": "AAAA"})


@pytest.mark.parametrize(
    ("parse", "args", "param"),
    [
        (parse_txt2txt, {"prompt": "x", "model": "sd"}, "model"),
        (parse_txt2txt, {}, "prompt"),
        (
            parse_txt2txt,
            {"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
            "messages",
        ),
        (parse_txt2txt, {"messages": [{"role": "user", "content": 3}]}, "messages[0]"),
        (parse_txt2txt, {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        (parse_txt2txt, {"prompt": "x", "temperature": True}, "temperature"),
        (parse_txt2txt, {"prompt": "x", "top_k": 3}, "top_k"),
        (parse_txt2img, {"prompt": "x", "model": "xl", "size": "512x512"}, "size"),
        (parse_txt2img, {"prompt": "x", "model": "xl", "n": 2}, "n"),
        (parse_txt2img, {"prompt": "x", "seed": -1}, "seed"),
        (parse_txt2img, {"prompt": ""}, "prompt"),
        (parse_img2img, {"prompt": "x"}, "image"),
        (parse_img2img, {"prompt": "x", "image": "AAAA", "strength": 0}, "strength"),
        (parse_img2txt, {"image": "AAAA", "model": "chat"}, "model"),
        (parse_img2txt, {"image": "AAAA", "prompt": "  "}, "prompt"),
        (parse_embed, {}, "input"),
        (parse_embed, {"input": []}, "input"),
        (parse_embed, {"input": ["a", " "]}, "input"),
        (parse_embed, {"input": ["a"] * 33}, "input"),
        (parse_embed, {"input": "a", "model": "chat"}, "model"),
        (parse_embed, {"input": "a", "dimensions": 3}, "dimensions"),
    ],
)
def test_bad_arguments_name_the_argument(parse, args, param) -> None:  # noqa: ANN001
    with pytest.raises(ArgumentError) as info:
        parse(MODELS, args)
    assert info.value.param == param
    assert info.value.message.startswith(f"Invalid argument '{param}': ")


def test_list_models_takes_no_arguments() -> None:
    with pytest.raises(ArgumentError, match="'verbose'"):
        parse_list_models({"verbose": True})


def test_good_arguments_become_requests() -> None:
    chat = parse_txt2txt(MODELS, {"prompt": "hi", "system": "be brief", "max_tokens": 5})
    assert chat.model.id == "chat"  # the first text model by default
    assert chat.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert chat.options == {"max_tokens": 5}
    image = parse_txt2img(MODELS, {"prompt": "a cat", "model": "sd", "size": "768x512", "n": 3.0})
    assert (image.size, image.n, image.seed) == ("768x512", 3, None)
    edit = parse_img2img(MODELS, {"prompt": "x", "image": "AAAA", "strength": 0.5})
    assert edit.extra == {"strength": "0.5"} and edit.model.id == "sd"


def test_embed_takes_one_text_or_a_list_and_needs_an_embedding_model() -> None:
    assert parse_embed(MODELS, {"input": "hi"}).texts == ["hi"]
    parsed = parse_embed(MODELS, {"input": ["a", "b"], "model": "vec"})
    assert (parsed.model.id, parsed.texts) == ("vec", ["a", "b"])
    without = {k: v for k, v in MODELS.items() if k != "vec"}
    with pytest.raises(ToolFailure, match="No embedding model is configured"):
        parse_embed(without, {"input": "hi"})


def test_cosine_similarity() -> None:
    assert cosine([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)
    assert cosine([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0)
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0


async def test_progress_only_rises_and_stays_within_the_total() -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def report(value: float, total: float | None, message: str | None) -> None:
        seen.append((value, total, message))

    progress = Progress(report)
    for value in (1, 10, 9, 50, 50, 200, 80, 100):
        await progress.say(value, f"at {value}")
    values = [v for v, _, _ in seen]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
    assert max(values) <= 100 and {t for _, t, _ in seen} == {100}


async def test_progress_survives_a_client_that_is_gone() -> None:
    async def broken(value: float, total: float | None, message: str | None) -> None:
        raise ConnectionResetError("gone")

    progress = Progress(broken)
    await progress.say(5, "still fine")
    assert progress.messages == ["still fine"]


async def test_feed_remembers_load_times_and_fans_out() -> None:
    feed = EventFeed()

    def state(name: str, at: float) -> StateEvent:
        return StateEvent(model="m", state=name, previous="stopped", at=at)

    with feed.subscribe() as sub:
        for at, name in ((100.0, "starting"), (130.0, "ready"), (200.0, "starting")):
            feed.publish(state(name, at))
        assert feed.loading_since("m") == 200.0
        feed.publish(state("ready", 210.0))
        assert feed.usual_load("m") == 20.0  # median of 30 and 10
        assert feed.usual_load("other") is None
        feed.publish(SwapEvent(from_model=None, to="m", at=220.0))
        got = [await sub.get() for _ in range(5)]
        assert [type(e).__name__ for e in got] == ["StateEvent"] * 4 + ["SwapEvent"]
    assert feed.subscriber_count == 0  # closed subscriptions stop receiving


class _QuickLoad:
    """A manager (`models`) and a lease pool (`acquire`) whose load of "chat" ends
    `after` seconds into `acquire`, or, with `after=None`, while the caller asks `models`
    (so its events and the grant arrive together, within one look)."""

    def __init__(self, feed: EventFeed, after: float | None) -> None:
        self.feed, self.after = feed, after
        self.done = asyncio.Event()

    def load(self) -> None:
        now = time.time()
        for event in (
            StateEvent(model="chat", state="starting", previous="stopped", at=now - 0.1),
            SwapEvent(from_model=None, to="chat", at=now - 0.1),
            StateEvent(model="chat", state="ready", previous="starting", at=now),
        ):
            self.feed.publish(event)
        self.done.set()

    async def acquire(self, model: str) -> str:
        if self.after is not None:
            await asyncio.sleep(self.after)
            self.load()
        await self.done.wait()
        return "the lease"

    async def models(self, max_age: float = 0.0) -> dict[str, ModelStatus]:
        self.load()
        return {"chat": _status("chat", "text")}


@pytest.mark.parametrize("after", [0.05, None], ids=["before-the-first-look", "within-a-look"])
async def test_a_load_quicker_than_one_look_is_still_reported(after: float | None) -> None:
    feed = EventFeed()
    ctx = SimpleNamespace(feed=feed, manager=_QuickLoad(feed, after))
    progress = Progress(None)
    lease = ctx.manager.acquire("chat")
    assert await wait_for_lease(ctx, "chat", progress, lease) == "the lease"  # type: ignore[arg-type]
    loading = [m for m in progress.messages if m.startswith("loading chat")]
    assert loading and progress.messages[-1].startswith("loaded chat in "), progress.messages
    assert progress.loaded is not None and 0.0 <= progress.loaded < 5.0


async def test_picture_arguments(tmp_path) -> None:  # noqa: ANN001
    store = ImageStore(tmp_path, ttl=60)
    png = _png()
    b64 = base64.b64encode(png).decode()
    assert await read_image(store, b64, "image", 10_000) == png
    assert await read_image(store, f"data:image/png;base64,{b64}", "image", 10_000) == png
    name = store.put(png, "k")
    assert await read_image(store, f"http://any-host:8080/images/{name}", "image", 10_000) == png
    for bad, why in (
        ("https://example.com/x.png", "image URL this proxy returned"),
        (f"http://h/images/{'A' * 32}.png", "expired"),
        ("data:image/png,rawtext", "must be base64"),
        ("!!!", "not valid base64"),
        (base64.b64encode(b"hello").decode(), "not a PNG"),
    ):
        with pytest.raises(ArgumentError, match=why):
            await read_image(store, bad, "image", 10_000)
    with pytest.raises(ArgumentError, match="larger than 10 bytes"):
        await read_image(store, b64, "mask", 10)


def test_big_pictures_are_linked_not_inlined() -> None:
    small, big = "A" * 1000, "B" * (INLINE_LIMIT + 1)
    content = picture_content([("a" * 32 + ".png", small), ("b" * 32 + ".png", big)], "http://p")
    kinds = [c.type for c in content]
    assert kinds == ["image", "resource_link", "resource_link"]
    assert str(content[2].uri) == "http://p/images/" + "b" * 32 + ".png"


def test_body_limit_fits_an_image_and_a_mask_as_base64(tmp_path) -> None:  # noqa: ANN001
    settings = ProxySettings(manager_token="mcp-unit-Zq81xLw03kP", max_upload_bytes=3_000_000)
    assert body_limit(settings) > 3_000_000 * 4 // 3


async def test_mcp_refuses_a_missing_key_with_a_json_rpc_401(make_stack) -> None:  # noqa: ANN001
    async with make_stack(api_keys=[API_KEY]) as stack:
        r = await stack.client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        body = r.json()
        assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32001
        assert body["error"]["data"]["code"] == "invalid_api_key"


async def test_mcp_refuses_a_body_over_its_limit_with_a_413(make_stack) -> None:  # noqa: ANN001
    async with make_stack(max_upload_bytes=1000) as stack:
        limit = body_limit(stack.settings)
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        r = await stack.client.post("/mcp", content=b"x" * (limit + 1), headers=headers)
        assert r.status_code == 413
        error = r.json()["error"]
        assert error["code"] == "request_too_large" and str(limit) in error["message"]
        # At the limit the body reaches the SDK, which refuses it as bad JSON-RPC (a parse
        # error), not as too large.
        r = await stack.client.post("/mcp", content=b"x" * limit, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == PARSE_ERROR, r.text


async def test_allowed_hosts_turn_on_the_sdks_host_check(make_stack) -> None:  # noqa: ANN001
    headers = {"accept": "application/json, text/event-stream"}

    async def post(stack, host: str):  # noqa: ANN001, ANN202
        return await stack.client.post("/mcp", json=INITIALIZE, headers={**headers, "host": host})

    async with make_stack(allowed_hosts=["homelab.lan:*"]) as stack:
        # The proxy's own Host check (proxy/guard.py, every path) refuses it first.
        r = await post(stack, "evil.example:80")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
        # An IP literal passes the proxy's check; the setting makes the SDK refuse it
        # (it names homelab.lan only).
        r = await post(stack, "127.0.0.1:80")
        assert r.status_code == 421, r.text
        r = await post(stack, "homelab.lan:8080")
        assert r.status_code == 200, r.text
        assert initialized(r)
    async with make_stack() as stack:  # unset: the SDK checks nothing; the proxy still does
        r = await post(stack, "evil.example:80")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
        r = await post(stack, "127.0.0.1:80")
        assert r.status_code == 200, r.text
        assert initialized(r)


def initialized(response) -> bool:  # noqa: ANN001
    """Whether an /mcp answer (SSE or JSON) carries the server's initialize result."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [
            line.removeprefix("data:").strip()
            for line in response.text.splitlines()
            if line.startswith("data:")
        ]
        answers = [orjson.loads(d) for d in data if d]
    else:
        answers = [response.json()]
    return any(
        a.get("result", {}).get("serverInfo", {}).get("name") == "homelab-ai" for a in answers
    )
