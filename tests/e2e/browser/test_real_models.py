"""The whole product in the browser: real vLLM (CPU build, SmolLM2-135M-Instruct) and the
real diffusers image server (a tiny random-weight pipeline), started and swapped by the
real manager, behind the real proxy, used through the UI in real Chromium.

Markers ``browser``, ``vllm`` and ``diffusers``: it skips (with the fix) when the vLLM
CPU venv, the small model, diffusers or Chromium is missing. The model loads take
minutes on a busy 2-core machine, so its waits are long deadlines, not limits.

Its last screenshot is the README's picture: ``HOMELAB_UPDATE_DOCS_IMAGES=1`` copies it
to ``docs/img/terminal.png``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.browser.uistack import (
    DESKTOP,
    REPO_ROOT,
    SCREENSHOTS,
    Stack,
    Ui,
    natural_width,
    open_page,
    real_models,
    record_answer_text,
    require_browser,
    run_stack,
)

pytestmark = [pytest.mark.browser, pytest.mark.vllm, pytest.mark.diffusers]

expect = pytest.importorskip(
    "playwright.sync_api", reason="Python playwright is not installed"
).expect

LOAD_DEADLINE_MS = 900_000
"""vLLM loads in about 35 s on an idle machine; this only stops a broken start from hanging."""


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory: pytest.TempPathFactory, vllm_runtime, tiny_sd) -> Iterator[Stack]:  # noqa: ANN001
    require_browser()
    pytest.importorskip(
        "diffusers", reason="diffusers is not installed (pip install -e '.[image]')"
    )
    workdir = tmp_path_factory.mktemp("ui-real")
    models, settings = real_models(vllm_runtime, tiny_sd, LOAD_DEADLINE_MS / 1000)
    with run_stack(workdir, models, "smollm2", name="ui-real", manager_settings=settings) as stack:
        yield stack


@pytest.fixture
def real_ui(browser: object, real_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Ui]:
    # Tall enough for the whole conversation: the last screenshot is the README's picture.
    yield from open_page(
        browser, real_stack.proxy_url, request.node.name, {**DESKTOP, "height": 940}
    )


def test_real_models_stream_an_answer_then_swap_to_paint(real_ui: Ui) -> None:
    ui = real_ui
    page = ui.page
    ui.wait_ready("smollm2")
    ui.type_line("/set max_tokens 120")
    expect(page.locator(".line.ok").last).to_have_text("chat options: max_tokens=120")
    record_answer_text(ui)
    ui.type_line("Write a Python function that adds two numbers.")

    # Cold start: the manager launches vLLM; the UI says so while it loads.
    expect(page.locator(".line.pending")).to_contain_text("smollm2")
    ui.shot("loading-vllm")
    done = page.locator(".entry.answer:not(.streaming) .answer-body")
    expect(done).to_have_count(1, timeout=LOAD_DEADLINE_MS)
    text = done.text_content() or ""
    assert text.strip(), "the real model answered nothing"
    # Streamed: the answer was drawn in many states before the last (a code block's
    # caption changes as its fence arrives, so the states are not all prefixes).
    assert len(page.evaluate("window.__seen")) >= 3
    ui.shot("answered")

    # An image: the manager stops vLLM and starts the diffusers server (a real swap).
    ui.type_line("/image -s 128x128 a lighthouse on a cliff at dusk")
    expect(page.locator("#status")).to_have_attribute(
        "data-phase", re.compile("swapping|stopping|loading"), timeout=60_000
    )
    ui.shot("swapping")
    img = page.locator(".entry.images img")
    expect(img).to_have_count(1, timeout=LOAD_DEADLINE_MS)
    assert natural_width(img) == 128
    expect(page.locator(".entry.images figcaption")).to_contain_text("tiny-sd")
    expect(page.locator("#status")).to_have_attribute("data-phase", "idle")
    page.wait_for_function("() => document.querySelector('.entry.images .crt.loaded') !== null")
    page.wait_for_timeout(1200)  # the scan-in animation, for the picture only
    path = ui.shot("terminal")
    shutil.copyfile(path, SCREENSHOTS / "terminal-real-models.png")
    if os.environ.get("HOMELAB_UPDATE_DOCS_IMAGES") == "1":
        target: Path = REPO_ROOT / "docs" / "img" / "terminal.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
