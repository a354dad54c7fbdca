"""Pictures are jobs: a reload in the middle of a slow generation picks the picture up.

Real Chromium, the real proxy and manager, and a fakevllm image model that takes
`PAINT_SECONDS` to answer, so the page can be reloaded while the picture is being made.
The proxy must run the job once and the page must show it after the reload.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.browser.uistack import (
    DESKTOP,
    Stack,
    Ui,
    fake_models,
    natural_width,
    open_page,
    run_stack,
)

pytestmark = pytest.mark.browser

expect = pytest.importorskip(
    "playwright.sync_api", reason="Python playwright is not installed"
).expect

PAINT_SECONDS = "4"


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    models = fake_models()
    models = {"chat": models["chat"], "paint": models["paint"]}
    models["paint"]["env"] = {"FAKEVLLM_KIND": "image", "FAKEVLLM_RESPONSE_DELAY": PAINT_SECONDS}
    with run_stack(tmp_path_factory.mktemp("ui-jobs"), models, "chat", name="ui-jobs") as stack:
        yield stack


@pytest.fixture
def slow_ui(browser: object, slow_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Ui]:
    yield from open_page(browser, slow_stack.proxy_url, request.node.name, DESKTOP)


def image_tasks(stack: Stack) -> list[dict]:
    reply = httpx.post(
        stack.proxy_url + "rpc",
        json={"jsonrpc": "2.0", "id": 1, "method": "tasks.list", "params": {"model": "paint"}},
        timeout=10,
    ).json()
    return reply["result"]["tasks"]


def test_a_reload_during_a_long_picture_picks_it_up(slow_ui: Ui, slow_stack: Stack) -> None:
    page = slow_ui.page
    slow_ui.wait_ready()
    slow_ui.type_line("/image -s 64x64 a slow lighthouse")
    expect(page.locator(".line.pending")).to_contain_text("paint")
    # The proxy has the job (it is running: the model takes PAINT_SECONDS to answer) ...
    page.wait_for_function(
        "() => (localStorage.getItem('homelab-ai.pendingImages') || '').includes('task_')"
    )
    tasks = image_tasks(slow_stack)
    assert len(tasks) == 1 and tasks[0]["state"] in ("PENDING", "STARTED")
    slow_ui.shot("painting")

    # ... and the page goes away and comes back before the picture is ready.
    page.reload()
    page.wait_for_selector("html[data-ui=started]", state="attached")
    expect(page.locator(".line").filter(has_text="picking up the picture")).to_contain_text(
        "a slow lighthouse"
    )
    card = page.locator(".entry.images .image-card").last
    img = card.locator("img")
    expect(img).to_be_visible(timeout=60_000)
    assert natural_width(img) == 64
    expect(card.locator("figcaption")).to_contain_text("paint")
    slow_ui.shot("picked-up")
    assert page.evaluate("localStorage.getItem('homelab-ai.pendingImages')") is None
    tasks = image_tasks(slow_stack)
    assert [t["state"] for t in tasks] == ["SUCCESS"]  # made once, not twice

    # Another reload shows the stored picture and does not pick anything up again.
    page.reload()
    slow_ui.wait_ready()
    expect(page.locator(".entry.images img").last).to_be_visible()
    assert page.locator(".line").filter(has_text="picking up the picture").count() == 0
    assert len(image_tasks(slow_stack)) == 1


def test_stopping_a_picture_cancels_its_job(slow_ui: Ui, slow_stack: Stack) -> None:
    page = slow_ui.page
    slow_ui.wait_ready()
    before = len(image_tasks(slow_stack))
    slow_ui.type_line("/image -s 64x64 never mind")
    page.wait_for_function(
        "() => (localStorage.getItem('homelab-ai.pendingImages') || '').includes('task_')"
    )
    slow_ui.input.press("Escape")
    expect(page.locator(".line").filter(has_text="^C stopped").last).to_be_visible()
    page.wait_for_function("() => localStorage.getItem('homelab-ai.pendingImages') === null")
    tasks = image_tasks(slow_stack)
    assert len(tasks) == before + 1
    newest = max(tasks, key=lambda t: t["created_at"])
    deadline_tasks = newest
    for _ in range(50):
        if deadline_tasks["state"] == "CANCELLED":
            break
        page.wait_for_timeout(100)
        deadline_tasks = max(image_tasks(slow_stack), key=lambda t: t["created_at"])
    assert deadline_tasks["state"] == "CANCELLED"
