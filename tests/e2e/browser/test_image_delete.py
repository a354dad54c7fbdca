"""[delete] under a picture (issue 22): the picture goes from the proxy, so its URL
answers 404, and from this browser; the other pictures still show after a reload.

Real Chromium on the proxy that requires an API key (the delete route needs the key that
made the picture), the real manager, a fakevllm image model.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.browser.uistack import API_KEY, Stack, Ui

pytestmark = pytest.mark.browser

expect = pytest.importorskip(
    "playwright.sync_api", reason="Python playwright is not installed"
).expect


def stored_names(ui: Ui) -> list[str]:
    """The proxy's names of the pictures the page keeps (its transcript in localStorage)."""
    transcript = json.loads(ui.page.evaluate("localStorage.getItem('homelab-ai.transcript')"))  # type: ignore[attr-defined]
    return [ref.get("stored") for e in transcript if e["t"] == "image" for ref in e["images"]]


def test_delete_removes_the_picture_from_the_proxy_and_the_page(auth_ui: Ui, stack: Stack) -> None:
    ui, page = auth_ui, auth_ui.page
    expect(page.locator("#prompt-label")).to_have_text("key>")
    ui.type_line(API_KEY)
    ui.wait_ready()
    ui.type_line("/image -n 2 -s 64x64 two lighthouses")
    cards = page.locator(".entry.images .image-card")
    expect(cards).to_have_count(2, timeout=60_000)
    expect(cards.locator("img").last).to_be_visible()
    first, second = stored_names(ui)
    assert first and second, "pictures made by a job come as URLs the proxy stores"
    images = stack.auth_proxy_url.rstrip("/") + "/images/"
    assert httpx.get(images + first).status_code == 200  # no key: the URL is enough
    ui.shot("two")

    cards.first.get_by_role("button", name="delete").click()
    expect(page.locator(".entry.images")).to_contain_text("deleted")
    expect(cards).to_have_count(1)
    assert httpx.get(images + first).status_code == 404
    assert httpx.get(images + second).status_code == 200
    ui.shot("deleted")

    page.reload()
    ui.wait_ready()
    expect(page.locator(".entry.images .image-card img")).to_have_count(1)
    expect(page.locator(".entry.images .image-card img")).to_be_visible()
    expect(page.locator(".entry.images")).to_contain_text("[image paint-1: deleted]")
    assert stored_names(ui) == [first, second]
    ui.shot("reloaded")
