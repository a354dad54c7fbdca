"""The real `openai` SDK against the real proxy, the real manager and fakevllm servers.

Everything runs as separate processes on loopback (see conftest.py). The SDK is
told not to retry, so each error case is exactly one request.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image
from proxy_live import MAX_UPLOAD, LiveStack, run_open_proxy


@pytest.fixture(scope="module")
def sdk(live_stack: LiveStack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=live_stack.proxy_url + "/v1",
        api_key=live_stack.api_key,
        max_retries=0,
        timeout=120,
    )


def png(width: int = 16, height: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_models_list_has_every_model_with_type_and_state(
    sdk: openai.OpenAI, live_stack: LiveStack
) -> None:
    models = {m.id: m for m in sdk.models.list()}
    assert set(models) == {
        live_stack.text,
        live_stack.other_text,
        live_stack.image,
        live_stack.broken_image,
        live_stack.embedding,
    }
    assert models[live_stack.embedding].model_dump()["type"] == "embedding"
    image = models[live_stack.image].model_dump()
    assert image["type"] == "image" and image["sizes"] == ["64x64", "32x48"] and image["max_n"] == 2
    text = models[live_stack.text].model_dump()
    assert text["type"] == "text" and text["state"] in {
        "stopped",
        "starting",
        "ready",
        "stopping",
        "failed",
    }
    assert sdk.models.retrieve(live_stack.text).id == live_stack.text


def test_chat_plain(sdk: openai.OpenAI, live_stack: LiveStack) -> None:
    answer = sdk.chat.completions.create(
        model=live_stack.text, messages=[{"role": "user", "content": "hello there"}]
    )
    assert answer.choices[0].message.content == f"[{live_stack.text}] hello there"
    assert answer.usage.completion_tokens == 3


def test_chat_streaming(sdk: openai.OpenAI, live_stack: LiveStack) -> None:
    stream = sdk.chat.completions.create(
        model=live_stack.text,
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"[{live_stack.text}] one two three"
    assert len(chunks) >= 5
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_completions(sdk: openai.OpenAI, live_stack: LiveStack) -> None:
    answer = sdk.completions.create(model=live_stack.text, prompt="say this", max_tokens=2)
    assert answer.choices[0].text == f"[{live_stack.text}] say"
    assert answer.choices[0].finish_reason == "length"


def test_embeddings(sdk: openai.OpenAI, live_stack: LiveStack) -> None:
    answer = sdk.embeddings.create(model=live_stack.embedding, input=["a", "b"])
    assert [len(d.embedding) for d in answer.data] == [8, 8]
    assert answer.data[0].embedding != answer.data[1].embedding
    with pytest.raises(openai.BadRequestError) as info:  # a text model is no embedder
        sdk.embeddings.create(model=live_stack.text, input="a")
    assert info.value.code == "wrong_model_type" and live_stack.embedding in info.value.message


def test_images_generate_b64(sdk: openai.OpenAI, live_stack: LiveStack) -> None:
    answer = sdk.images.generate(
        model=live_stack.image, prompt="a red fox", size="32x48", n=2, response_format="b64_json"
    )
    assert len(answer.data) == 2
    image = Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json)))
    assert image.size == (32, 48)


def test_images_generate_url_is_served_by_the_proxy(
    sdk: openai.OpenAI, live_stack: LiveStack
) -> None:
    answer = sdk.images.generate(
        model=live_stack.image, prompt="a red fox", size="64x64", response_format="url"
    )
    url = answer.data[0].url
    assert url.startswith(live_stack.proxy_url + "/images/")
    fetched = httpx.get(url, timeout=30)  # no API key: image URLs work in an <img> tag
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)


def test_image_urls_are_absolute_and_fetchable_without_a_public_url(
    live_stack: LiveStack, tmp_path: Path
) -> None:
    """Regression: without HOMELAB_PUBLIC_URL the proxy answered a relative
    `/images/<id>.png`, which no SDK client can fetch. Now the URL is on the Host the
    client used (one the Host check accepted), whichever name it used."""
    with run_open_proxy(live_stack, tmp_path, {"HOMELAB_PUBLIC_URL": None}) as url:
        port = url.rsplit(":", 1)[1]
        for base in (url, f"http://localhost:{port}"):
            client = openai.OpenAI(
                base_url=base + "/v1", api_key="open-proxy", max_retries=0, timeout=120
            )
            with client:
                answer = client.images.generate(
                    model=live_stack.image, prompt="a red fox", size="64x64", response_format="url"
                )
            image_url = answer.data[0].url or ""
            assert image_url.startswith(base + "/images/"), image_url
            fetched = httpx.get(image_url, timeout=30)
            assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)


@pytest.mark.parametrize("fmt", ["b64_json", "url"])
def test_images_edit_with_uploaded_png(sdk: openai.OpenAI, live_stack: LiveStack, fmt: str) -> None:
    answer = sdk.images.edit(
        model=live_stack.image,
        image=("input.png", png(), "image/png"),
        prompt="make it blue",
        size="64x64",
        response_format=fmt,
    )
    if fmt == "url":
        data = httpx.get(answer.data[0].url, timeout=30).content
    else:
        data = base64.b64decode(answer.data[0].b64_json)
    assert Image.open(io.BytesIO(data)).size == (64, 64)


def test_swaps_between_text_models_show_in_the_model_list(
    sdk: openai.OpenAI, live_stack: LiveStack
) -> None:
    for name in (live_stack.other_text, live_stack.text):
        answer = sdk.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == f"[{name}] hi"
        states = {m.id: m.model_dump()["state"] for m in sdk.models.list()}
        assert states[name] == "ready"


# ---------------------------------------------------------------- errors


def _source(exc: openai.APIStatusError) -> str:
    return exc.body["source"] if isinstance(exc.body, dict) else None


def test_unknown_model_is_not_found(sdk: openai.OpenAI, live_stack: LiveStack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert live_stack.text in info.value.message and live_stack.image in info.value.message
    assert _source(info.value) == "proxy"


def test_wrong_type_is_bad_request(sdk: openai.OpenAI, live_stack: LiveStack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model=live_stack.text, prompt="x")
    assert "/v1/chat/completions" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model=live_stack.image, messages=[{"role": "user", "content": "x"}]
        )
    assert "/v1/images/generations" in info.value.message


def test_unsupported_size_and_n_are_bad_requests(sdk: openai.OpenAI, live_stack: LiveStack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model=live_stack.image, prompt="x", size="1024x1024")
    assert info.value.body["param"] == "size" and "64x64" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.generate(model=live_stack.image, prompt="x", n=3)
    assert info.value.body["param"] == "n"


def test_oversize_upload_is_413(sdk: openai.OpenAI, live_stack: LiveStack) -> None:
    big = png() + b"\0" * (MAX_UPLOAD + 1024)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.edit(model=live_stack.image, image=("big.png", big, "image/png"), prompt="x")
    assert info.value.status_code == 413
    assert info.value.body["code"] == "request_too_large"


def test_bad_api_key_is_authentication_error(live_stack: LiveStack) -> None:
    bad = openai.OpenAI(
        base_url=live_stack.proxy_url + "/v1", api_key="not-the-key-0123456789", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(
            model=live_stack.text, messages=[{"role": "user", "content": "x"}]
        )


def test_model_server_error_keeps_its_status_and_source(
    sdk: openai.OpenAI, live_stack: LiveStack
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model=live_stack.text, messages=[{"role": "user", "content": "x"}], max_tokens=-1
        )
    assert _source(info.value) == "model_server"
    assert info.value.body["param"] == "max_tokens"


def test_upstream_start_failure_is_a_server_error_from_the_manager(
    sdk: openai.OpenAI, live_stack: LiveStack
) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        sdk.images.generate(model=live_stack.broken_image, prompt="x")
    assert info.value.status_code == 503
    assert _source(info.value) == "manager"
    assert "failed" in info.value.message.lower()
    # The manager recovers: the next text request still works.
    answer = sdk.chat.completions.create(
        model=live_stack.text, messages=[{"role": "user", "content": "ok"}]
    )
    assert answer.choices[0].message.content.endswith("ok")
