"""Fixtures of the browser tests (marker ``browser``); the harness is in uistack.py.

- ``stack`` (session): the real manager + proxy + API-key proxy, fakevllm model servers.
- ``playwright_driver`` (session): the one Playwright driver; ``browser`` (session):
  Debian's Chromium through it.
- ``ui`` / ``phone``: a fresh page on the proxy's UI (desktop / phone viewport), every
  model stopped first; ``auth_ui``: the same on the proxy that requires an API key.
All skip with the reason when Chromium or playwright is missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.browser.uistack import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    Stack,
    Ui,
    fake_models,
    open_page,
    require_browser,
    run_stack,
)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_browser()
    with run_stack(tmp_path_factory.mktemp("ui-stack"), fake_models(), "chat") as running:
        yield running


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[object]:
    """The one Playwright driver of the session: its sync API runs an event loop of its
    own, and a second one started while it runs fails, so every Chromium (this file's
    `browser`, the speech tests' fake-microphone ones) is launched from this one."""
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    # expect() waits 5 s by default, apart from the context's 30 s: on a loaded machine
    # (two cores shared by several test runs) a streamed answer can take longer than that.
    expect.set_options(timeout=30_000)
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser(playwright_driver: object) -> Iterator[object]:
    chromium = playwright_driver.chromium.launch(  # type: ignore[attr-defined]
        executable_path=CHROMIUM, args=CHROMIUM_ARGS
    )
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def ui(browser: object, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Ui]:
    stack.stop_all_models()
    yield from open_page(browser, stack.proxy_url, request.node.name, DESKTOP)


@pytest.fixture
def phone(browser: object, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Ui]:
    stack.stop_all_models()
    yield from open_page(browser, stack.proxy_url, request.node.name, PHONE)


@pytest.fixture
def auth_ui(browser: object, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Ui]:
    stack.stop_all_models()
    yield from open_page(browser, stack.auth_proxy_url, request.node.name, DESKTOP)
