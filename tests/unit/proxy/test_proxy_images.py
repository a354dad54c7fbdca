"""Images through the proxy: b64 and url answers, the URL store, multipart edits."""

from __future__ import annotations

import base64
import time

import orjson
import pytest
from proxy_fakes import png_bytes
from proxy_stack import Stack

from proxy.errors import InvalidRequest, UpstreamError
from proxy.guard import host_authority
from proxy.images import ImageStore, check_image_request, urls_for
from wire.models import ModelStatus


async def test_generation_b64_is_forwarded_unchanged(stack: Stack) -> None:
    body = orjson.dumps(
        {"model": "img", "prompt": "a cat", "size": "32x48", "response_format": "b64_json"}
    )
    r = await stack.client.post(
        "/v1/images/generations", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["data"][0]["b64_json"])
    assert png.startswith(b"\x89PNG")
    assert stack.upstream.requests[-1][1] == body


async def test_generation_url_is_absolute_on_the_accepted_host_and_serves_the_image(
    stack: Stack,
) -> None:
    """Without HOMELAB_PUBLIC_URL the URLs are absolute on the Host the Host check accepted
    (regression: they were relative, `/images/<id>.png`, which no SDK client can fetch)."""
    r = await stack.client.post(
        "/v1/images/generations",
        json={"model": "img", "prompt": "a cat", "n": 2, "response_format": "url"},
        headers={"Host": "evil.example"},  # a Host the proxy would echo before issue 13
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    r = await stack.client.post(
        "/v1/images/generations",
        json={"model": "img", "prompt": "a cat", "n": 2, "response_format": "url"},
    )
    assert r.status_code == 200, r.text
    urls = [item["url"] for item in r.json()["data"]]
    assert len(urls) == 2 and len(set(urls)) == 2
    sent = orjson.loads(stack.upstream.requests[-1][1])
    assert sent["response_format"] == "b64_json" and sent["n"] == 2 and sent["prompt"] == "a cat"
    for url in urls:
        assert url.startswith(stack.url + "/images/"), url
        img = await stack.client.get(url)
        assert img.status_code == 200
        assert img.headers["content-type"] == "image/png"
        assert img.content.startswith(b"\x89PNG")
    port = stack.url.rsplit(":", 1)[1]
    r = await stack.client.post(
        "/v1/images/generations",
        json={"model": "img", "prompt": "a cat", "response_format": "url"},
        headers={"Host": f"LocalHost:{port}"},  # an allowed name: the URL is on it
    )
    assert r.json()["data"][0]["url"].startswith(f"http://localhost:{port}/images/")


@pytest.mark.parametrize(
    ("allowed", "host"),
    [
        (["*"], "evil.example:8080"),  # let in by `*` alone: not a host the check accepted
        ([], "localhost:1@evil.example"),  # an allowed name with a port that is no port
        ([], "127.0.0.1:80/evil.example"),
    ],
)
async def test_image_urls_never_echo_a_host_the_check_did_not_accept(
    make_stack, allowed: list[str], host: str
) -> None:
    """Such a Host is answered, but the URLs name the address the connection came in on."""
    async with make_stack(allowed_hosts=allowed) as stack:
        r = await stack.client.post(
            "/v1/images/generations",
            json={"model": "img", "prompt": "x", "response_format": "url"},
            headers={"Host": host},
        )
        assert r.status_code == 200, r.text
        url = r.json()["data"][0]["url"]
        assert url.startswith(stack.url + "/images/") and "evil" not in url, url


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost:8080", "localhost:8080"),
        ("LocalHost", "localhost"),
        ("homelab.lan.:80", "homelab.lan:80"),
        ("192.168.1.5:8080", "192.168.1.5:8080"),
        ("[::1]:8080", "[::1]:8080"),
        ("[fe80::1]", "[fe80::1]"),
        ("localhost:99999", None),
        ("localhost:80a", None),
        ("localhost:1@evil.example", None),
        ("a b:80", None),
        ("[::1]x", None),
        ("", None),
    ],
)
def test_host_authority_rebuilds_a_host_or_refuses_it(host: str, expected: str | None) -> None:
    assert host_authority(host) == expected


async def test_public_url_setting_is_used_for_image_urls(make_stack) -> None:
    async with make_stack(public_url="https://ai.example.lan:8443/") as stack:
        r = await stack.client.post(
            "/v1/images/generations", json={"model": "img", "prompt": "x", "response_format": "url"}
        )
        assert r.json()["data"][0]["url"].startswith("https://ai.example.lan:8443/images/")


async def test_edit_multipart_is_forwarded_and_url_rewritten(stack: Stack) -> None:
    files = {"image": ("in.png", png_bytes(), "image/png")}
    data = {
        "model": "img",
        "prompt": "make it blue",
        "size": "64x64",
        "response_format": "b64_json",
    }
    r = await stack.client.post("/v1/images/edits", files=files, data=data)
    assert r.status_code == 200, r.text
    raw_sent = stack.upstream.requests[-1][1]
    assert png_bytes() in raw_sent and b"make it blue" in raw_sent

    data["response_format"] = "url"
    r = await stack.client.post("/v1/images/edits", files=files, data=data)
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    assert (await stack.client.get(url)).content.startswith(b"\x89PNG")
    raw_sent = stack.upstream.requests[-1][1]
    assert b'name="response_format"\r\n\r\nb64_json' in raw_sent and png_bytes() in raw_sent


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        ({}, {"model": "img", "prompt": "x"}, "image"),
        (
            {"image": ("a.txt", b"not an image", "text/plain")},
            {"model": "img", "prompt": "x"},
            "image",
        ),
        (
            {"image": ("a.png", png_bytes(), "image/png")},
            {"model": "img", "prompt": "x", "n": "9"},
            "n",
        ),
        (
            {"image": ("a.png", png_bytes(), "image/png")},
            {"model": "img", "prompt": "x", "n": "two"},
            "n",
        ),
        ({"image": ("a.png", png_bytes(), "image/png")}, {"prompt": "x"}, "model"),
        (  # the mask is type-checked like the image (issue 13)
            {
                "image": ("a.png", png_bytes(), "image/png"),
                "mask": ("m.png", b"<svg onload=alert(1)>", "image/png"),
            },
            {"model": "img", "prompt": "x"},
            "mask",
        ),
        (
            {
                "image": ("a.png", png_bytes(), "image/png"),
                "mask": ("m.gif", b"GIF89a" + bytes(40), "image/gif"),
            },
            {"model": "img", "prompt": "x"},
            "mask",
        ),
        (
            {"image": ("a.gif", b"GIF89a" + bytes(40), "image/gif")},
            {"model": "img", "prompt": "x"},
            "image",
        ),
    ],
)
async def test_bad_edits_are_refused_before_any_lease(stack: Stack, files, data, param) -> None:
    r = await stack.client.post(
        "/v1/images/edits", files=files or {"dummy": ("d", b"", "x/y")}, data=data
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert stack.manager.granted == 0


async def test_edit_needs_multipart(stack: Stack) -> None:
    r = await stack.client.post("/v1/images/edits", json={"model": "img", "prompt": "x"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_content_type"


async def test_oversize_upload_is_413(make_stack) -> None:
    async with make_stack(max_upload_bytes=4096) as stack:
        files = {"image": ("big.png", png_bytes() + b"\0" * 8192, "image/png")}
        r = await stack.client.post(
            "/v1/images/edits", files=files, data={"model": "img", "prompt": "x"}
        )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
        assert stack.manager.granted == 0


async def test_unknown_or_expired_image_is_404(stack: Stack) -> None:
    for name in ["nope.png", "../../etc/passwd", "A" * 32 + ".png"]:
        r = await stack.client.get(f"/images/{name}")
        assert r.status_code == 404
        assert r.json()["error"]["source"] == "proxy"


def test_store_expires_images(tmp_path) -> None:
    store = ImageStore(tmp_path, ttl=60)
    name = store.put(png_bytes(), "k")
    assert store.get(name)[0] == png_bytes()
    path = tmp_path / name
    old = time.time() - 120
    import os

    os.utime(path, (old, old))
    assert store.get(name) is None
    assert not path.exists()
    other = store.put(png_bytes(), "k")
    os.utime(tmp_path / other, (old, old))
    assert store.purge_expired() == 1


def test_store_refuses_non_images(tmp_path) -> None:
    with pytest.raises(UpstreamError):
        ImageStore(tmp_path, 60).put(b"<html>", "k")


def test_urls_for_keeps_other_fields(tmp_path) -> None:
    store = ImageStore(tmp_path, 60)
    answer = {
        "created": 5,
        "data": [{"b64_json": base64.b64encode(png_bytes()).decode(), "revised_prompt": "p"}],
    }
    out = urls_for(store, answer, "http://h:1", "k")
    assert out["created"] == 5
    item = out["data"][0]
    assert item["revised_prompt"] == "p" and "b64_json" not in item
    assert item["url"].startswith("http://h:1/images/")
    with pytest.raises(UpstreamError):
        urls_for(store, {"data": [{"b64_json": "!!!"}]}, "http://h:1", "k")


@pytest.mark.parametrize(
    ("n", "size", "fmt", "param"),
    [
        (0, None, None, "n"),
        (True, None, None, "n"),
        (3, None, None, "n"),
        (None, 64, None, "size"),
        (None, "1x1", None, "size"),
        (None, None, "png", "response_format"),
    ],
)
def test_check_image_request_refuses(n, size, fmt, param) -> None:
    model = ModelStatus(id="img", type="image", state="ready", since=0.0, sizes=["64x64"], max_n=2)
    with pytest.raises(InvalidRequest) as info:
        check_image_request(model, n, size, fmt)
    assert info.value.param == param


def test_check_image_request_accepts_defaults_and_auto() -> None:
    model = ModelStatus(id="img", type="image", state="ready", since=0.0, sizes=["64x64"], max_n=2)
    check_image_request(model, None, None, None)
    check_image_request(model, 2, "auto", "url")
    check_image_request(model, 1, "64x64", "b64_json")


def test_the_image_store_keeps_at_most_its_count_and_bytes_oldest_first(tmp_path) -> None:
    store = ImageStore(tmp_path, ttl=3600, max_count=3, max_bytes=10 * len(png_bytes()))
    names = []
    for i in range(5):
        names.append(store.put(png_bytes(), "k"))
        now = time.time() - 100 + i  # distinct ages, oldest first
        __import__("os").utime(tmp_path / names[-1], (now, now))
    kept = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert kept == sorted(n for name in names[-3:] for n in (name, name + ".owner"))
    assert store.get(names[0]) is None and store.get(names[-1]) is not None

    by_bytes = ImageStore(tmp_path / "b", ttl=3600, max_count=100, max_bytes=2 * len(png_bytes()))
    many = [by_bytes.put(png_bytes(), "k") for _ in range(4)]
    left = [p for p in (tmp_path / "b").iterdir() if not p.name.endswith(".owner")]
    assert len(left) == 2 and many[-1] in {p.name for p in left}
    assert {p.name for p in (tmp_path / "b").iterdir()} == {
        n for p in left for n in (p.name, p.name + ".owner")
    }
