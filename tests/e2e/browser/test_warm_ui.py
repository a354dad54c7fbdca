"""The UI's status bar for a model that goes to sleep in host memory and wakes (the warm
tier), against the real manager and proxy with stand-in vLLM servers whose sleep and wake
take long enough to be seen.

Its own stack (module scope): `nap` opts in to the warm tier, `chat` does not, and the GPU
budget (10) holds one of them at a time. A learned cold start of `nap` is seeded into the
manager's swaptimes.json (the stand-in loads in a blink: the policy would rightly find a
cold start cheaper than keeping it warm).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.e2e.browser.uistack import DESKTOP, Stack, Ui, fake_entry, open_page, run_stack

pytestmark = pytest.mark.browser

MOVE_S = "2"
"""How long the stand-in takes to fall asleep and to wake: long enough to see each."""


@pytest.fixture(scope="module")
def warm_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("ui-warm")
    logs = workdir / "model-logs"
    logs.mkdir()
    (logs / "swaptimes.json").write_text(json.dumps({"models": {"nap": {"load_s": [60.0] * 5}}}))
    models = {
        "nap": fake_entry(
            "text",
            warm={"level": 1},
            gpu_memory_mib=10,
            env={
                "FAKEVLLM_SLEEP_SECONDS": MOVE_S,
                "FAKEVLLM_WAKE_SECONDS": MOVE_S,
                "FAKEVLLM_WEIGHTS_MIB": "16",
            },
            description="Fake chat model kept warm in host memory.",
        ),
        "chat": fake_entry("text", gpu_memory_mib=10, description="Fake chat model."),
    }
    settings = {"HOMELAB_GPU_BUDGET_MIB": "10", "HOMELAB_HOST_BUDGET_MIB": "1024"}
    with run_stack(workdir, models, "nap", name="ui-warm", manager_settings=settings) as stack:
        yield stack


@pytest.fixture
def warm_ui(browser: object, warm_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Ui]:
    warm_stack.stop_all_models()
    yield from open_page(browser, warm_stack.proxy_url, request.node.name, DESKTOP)


def test_the_status_bar_shows_a_model_going_to_sleep_and_waking(
    warm_ui: Ui, warm_stack: Stack
) -> None:
    from playwright.sync_api import expect

    ui, page = warm_ui, warm_ui.page
    status, text = page.locator("#status"), page.locator("#status-text")
    warm_stack.ensure("nap")
    ui.wait_ready("nap")
    ui.type_line("/model chat")
    expect(page.locator("#prompt-label")).to_have_text("chat>")
    ui.type_line("hello while nap sleeps")
    # nap leaves the GPU by falling asleep (its weights to host memory), not by stopping.
    expect(status).to_have_attribute("data-phase", "sleeping")
    expect(status).to_have_attribute("data-model", "nap")
    expect(text).to_have_text("putting nap to sleep in host memory")
    ui.shot("falling-asleep")
    ui.answered("[chat] hello while nap sleeps")
    expect(status).to_have_attribute("data-phase", "idle")
    expect(text).to_have_text("chat · ready · resident: chat · asleep: nap")
    ui.shot("asleep")
    ui.type_line("/models")
    row = page.locator("table.models tr[data-model=nap]").last
    expect(row.locator("td.state")).to_have_text("sleeping")
    # the seeded cold start (60 s) and the level; the host memory once it was read
    expect(row.locator("td.about")).to_contain_text(
        re.compile(r"warm \(sleep level 1, (\d+ MiB of host memory asleep, )?cold start 60 s\)")
    )

    ui.type_line("/model nap")
    expect(page.locator(".line.ok").last).to_contain_text(
        "switched to nap (text model; sleeping in host memory, it wakes on the first request)"
    )
    expect(text).to_have_text(
        "nap · sleeping in host memory (wakes on first use) · resident: chat · asleep: nap"
    )
    ui.type_line("hello after the wake")
    # chat (not warm) is stopped; nap wakes from host memory instead of loading.
    expect(status).to_have_attribute("data-phase", "swapping")
    expect(text).to_contain_text("swapping chat → nap · waking nap from host memory")
    expect(page.locator("#status-clock")).to_have_text(re.compile(r"^0:0[0-9]$"))
    expect(page.locator(".line.pending")).to_contain_text("waking nap from host memory")
    ui.shot("waking")
    ui.answered("[nap] hello after the wake")
    expect(status).to_have_attribute("data-phase", "idle")
    expect(text).to_have_text("nap · ready · resident: nap")
    ui.shot("awake")
