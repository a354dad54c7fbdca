"""The live stack as someone else on the LAN would probe it (issue 13), all real processes.

- A model server's port answers nothing under /v1 without the per-start upstream key the
  manager made for it (vLLM's `--api-key` behaviour, which fakevllm copies; the image
  server's 401 envelope); the proxy gets the key in its lease and sends it, replacing
  the client's own Authorization, which never reaches the model server.
- The proxy refuses what a web page on another site could make a browser send: a
  `text/plain` (or form) POST is 415, a POST whose Origin is another site is 403, and a
  Host that is not the proxy's (DNS rebinding) is 400.
- Every answer carries the CSP, nosniff and frame-ancestors headers; /docs (Swagger
  from a CDN) is off.
"""

from __future__ import annotations

import httpx
import pytest
from proxy_live import LiveStack


def _lease(stack: LiveStack, model: str) -> dict:
    with httpx.Client(
        base_url=stack.manager_url,
        headers={"Authorization": f"Bearer {stack.manager_token}"},
        timeout=60,
    ) as manager:
        granted = manager.post("/v1/leases", json={"model": model})
        assert granted.status_code == 200, granted.text
        lease = granted.json()
        manager.delete(f"/v1/leases/{lease['lease_id']}")
    return lease


@pytest.mark.parametrize(
    ("kind", "path", "body"),
    [
        ("text", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("image", "/v1/images/generations", {"prompt": "a cat", "size": "64x64"}),
    ],
)
def test_a_model_port_refuses_requests_without_the_upstream_key(
    live_stack: LiveStack, kind: str, path: str, body: dict
) -> None:
    model = live_stack.text if kind == "text" else live_stack.image
    with live_stack.client() as client:
        through = client.post(path, json={**body, "model": model})
        # The proxy sent the upstream key (not the client's API key, which fakevllm refuses).
        assert through.status_code == 200, through.text
    lease = _lease(live_stack, model)
    assert lease["api_key"], lease
    direct = lease["base_url"] + path
    payload = {**body, "model": model}
    assert httpx.post(direct, json=payload, timeout=30).status_code == 401
    for wrong in (live_stack.api_key, live_stack.manager_token, lease["api_key"] + "x"):
        refused = httpx.post(
            direct, json=payload, headers={"Authorization": f"Bearer {wrong}"}, timeout=30
        )
        assert refused.status_code == 401, wrong
    assert httpx.get(lease["base_url"] + "/v1/models", timeout=30).status_code == 401
    allowed = httpx.post(
        direct, json=payload, headers={"Authorization": f"Bearer {lease['api_key']}"}, timeout=60
    )
    assert allowed.status_code == 200, allowed.text


def test_each_start_gets_a_new_upstream_key(live_stack: LiveStack) -> None:
    before = _lease(live_stack, live_stack.text)["api_key"]
    with live_stack.client() as client:  # the other text model swaps it out, then back in
        for model in (live_stack.other_text, live_stack.text):
            done = client.post(
                "/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 1}
            )
            assert done.status_code == 200, done.text
    after = _lease(live_stack, live_stack.text)["api_key"]
    assert after and after != before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_post_that_is_not_declared_json_is_refused(
    live_stack: LiveStack, content_type: str | None
) -> None:
    """The "simple" requests a page on any site can make a browser send without asking."""
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % (
        live_stack.text.encode()
    )
    headers = {"Authorization": f"Bearer {live_stack.api_key}"}
    if content_type:
        headers["Content-Type"] = content_type
    answer = httpx.post(
        live_stack.proxy_url + "/v1/chat/completions", content=body, headers=headers, timeout=30
    )
    assert answer.status_code == 415, answer.text
    assert answer.json()["error"]["code"] == "unsupported_media_type"


def test_a_cross_site_post_is_refused_and_a_same_site_one_is_not(live_stack: LiveStack) -> None:
    payload = {"model": live_stack.text, "messages": [{"role": "user", "content": "hi"}]}
    with live_stack.client() as client:
        evil = client.post(
            "/v1/chat/completions", json=payload, headers={"Origin": "http://evil.example"}
        )
        assert evil.status_code == 403, evil.text
        assert evil.json()["error"]["code"] == "cross_origin"
        own = client.post(
            "/v1/chat/completions", json=payload, headers={"Origin": live_stack.proxy_url}
        )
        assert own.status_code == 200, own.text


def test_a_host_the_proxy_does_not_serve_is_refused(live_stack: LiveStack) -> None:
    """DNS rebinding: a page on attacker.example whose name now points at the proxy."""
    port = live_stack.proxy_url.rsplit(":", 1)[1]
    for path in ("/", "/v1/models", "/readyz"):
        answer = httpx.get(
            live_stack.proxy_url + path,
            headers={
                "Host": f"attacker.example:{port}",
                "Authorization": f"Bearer {live_stack.api_key}",
            },
            timeout=30,
        )
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["error"]["code"] == "invalid_host"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert (
            httpx.get(live_stack.proxy_url + "/healthz", headers={"Host": host}).status_code == 200
        )


def test_every_answer_carries_the_browser_security_headers(live_stack: LiveStack) -> None:
    for path in ("/", "/healthz", "/v1/models", "/no-such-page"):
        headers = httpx.get(live_stack.proxy_url + path, timeout=30).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert headers["x-content-type-options"] == "nosniff", path
    assert httpx.get(live_stack.proxy_url + "/docs", timeout=30).status_code == 404
    assert httpx.get(live_stack.proxy_url + "/openapi.json", timeout=30).status_code == 200
