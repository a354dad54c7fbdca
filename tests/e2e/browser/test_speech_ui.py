"""Speech in the terminal (issue 24): the [mic] button records through Chromium's fake
capture device (a WAV file played as the microphone) and transcribes into the prompt,
by holding it (desktop) and by tapping it twice (phone); /say and spoken answers play
through Web Audio; /voices lists the voices; a refused microphone and a missing model
are explained in the terminal.

Real Chromium (``--use-fake-device-for-media-stream --use-file-for-fake-audio-capture``),
the real manager (process runtime) and proxy; the model servers are the stand-ins:
fakevllm for chat, tests/fixtures/fakeaudio for the stt and tts models (it speaks the
audio server's protocol; it "hears" a recording as ``heard N.N seconds of webm audio``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.browser.uistack import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    Stack,
    Ui,
    audio_entry,
    fake_entry,
    open_page,
    require_browser,
    run_stack,
)
from tests.fixtures.fakeaudio.server import speech_parts, wav_header

pytestmark = pytest.mark.browser

expect = pytest.importorskip(
    "playwright.sync_api", reason="Python playwright is not installed"
).expect

SAID = "Testing the microphone. One two three."


@pytest.fixture(scope="module")
def speech_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_browser()
    models = {
        "chat": fake_entry("text", description="Fake chat model (echoes you)."),
        "hear": audio_entry("stt"),
        "say": audio_entry("tts"),
    }
    with run_stack(tmp_path_factory.mktemp("speech-stack"), models, "chat", "speech") as running:
        yield running


@pytest.fixture(scope="module")
def capture_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone plays: a few seconds of the stand-in's speech."""
    parts = speech_parts(SAID, 0.5)
    path = tmp_path_factory.mktemp("mic") / "said.wav"
    path.write_bytes(wav_header(SAID, sum(map(len, parts))) + b"".join(parts))
    return path


def _launch(driver: object, args: list[str]) -> Iterator[object]:
    """A Chromium of its own (other flags), from the session's one Playwright driver."""
    chromium = driver.chromium.launch(  # type: ignore[attr-defined]
        executable_path=CHROMIUM, args=CHROMIUM_ARGS + args
    )
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture(scope="module")
def mic_browser(playwright_driver: object, capture_wav: Path) -> Iterator[object]:
    """Chromium whose microphone is the fake device playing `capture_wav`, allowed without
    asking, and that may play sound without a gesture."""
    yield from _launch(
        playwright_driver,
        [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={capture_wav}",
            "--autoplay-policy=no-user-gesture-required",
        ],
    )


@pytest.fixture(scope="module")
def refusing_browser(playwright_driver: object) -> Iterator[object]:
    """Chromium with a fake microphone but no fake permission prompt: headless, the
    prompt is dismissed, so the page is refused."""
    yield from _launch(playwright_driver, ["--use-fake-device-for-media-stream"])


def _page(
    browser: object, stack: Stack, request: pytest.FixtureRequest, view: dict, **options: object
) -> Iterator[Ui]:
    stack.stop_all_models()
    yield from open_page(browser, stack.proxy_url, request.node.name, view, **options)


@pytest.fixture
def mic_ui(
    mic_browser: object, speech_stack: Stack, request: pytest.FixtureRequest
) -> Iterator[Ui]:
    yield from _page(mic_browser, speech_stack, request, DESKTOP)


@pytest.fixture
def mic_phone(
    mic_browser: object, speech_stack: Stack, request: pytest.FixtureRequest
) -> Iterator[Ui]:
    yield from _page(mic_browser, speech_stack, request, PHONE, has_touch=True, is_mobile=True)


def test_holding_the_mic_transcribes_into_the_prompt(mic_ui: Ui) -> None:
    ui = mic_ui
    page = ui.page
    ui.wait_ready()
    mic = page.locator("#mic-btn")
    box = mic.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    expect(page.locator("html")).to_have_attribute("data-mic", "recording")
    expect(mic).to_have_text("[rec]")
    page.wait_for_timeout(1500)  # a recording of some length (not a timing assertion)
    ui.shot("recording")
    page.mouse.up()
    expect(mic).to_have_text("[mic]")
    expect(ui.input).to_have_value(re.compile(r"^heard \d+\.\d seconds of webm audio"))
    ui.shot("transcribed")
    # Enter sends it as a chat message: the fake chat model echoes it
    ui.input.press("Enter")
    expect(page.locator(".entry.answer").last).to_contain_text("heard")


def test_tapping_the_mic_twice_records_on_a_phone(mic_phone: Ui) -> None:
    phone = mic_phone
    page = phone.page
    phone.wait_ready()
    phone.input.fill("I said:")
    mic = page.locator("#mic-btn")
    expect(mic).to_be_visible()
    mic.tap()  # a short press: recording goes on after it
    expect(page.locator("html")).to_have_attribute("data-mic", "recording")
    page.wait_for_timeout(1200)
    mic.tap()  # the second press stops it
    expect(phone.input).to_have_value(re.compile(r"^I said: heard \d+\.\d seconds"))
    phone.shot("phone")


def test_say_voices_and_spoken_answers(mic_ui: Ui) -> None:
    ui = mic_ui
    page = ui.page
    ui.wait_ready()
    ui.type_line("/voices")
    expect(page.locator(".entry.voices tr[data-voice]")).to_have_count(2)
    expect(page.locator(".entry.voices")).to_contain_text("fake-amy")
    ui.type_line("/say -v fake-bob Hello from the terminal.")
    expect(page.locator("html")).to_have_attribute("data-spoken", "1")
    expect(page.locator("#scrollback")).to_contain_text("♪ say (fake-bob):")
    ui.type_line("/speak on")
    expect(page.locator("#speak-btn")).to_have_attribute("aria-pressed", "true")
    ui.type_line("First sentence here. And a second one!")
    ui.answered("[chat] First sentence here. And a second one!")
    # the echoed answer's two sentences, each spoken as it was complete
    expect(page.locator("html")).to_have_attribute("data-spoken", "3")
    ui.shot("spoken")
    page.locator("#speak-btn").click()
    expect(page.locator("#speak-btn")).to_have_attribute("aria-pressed", "false")


def test_a_refused_microphone_is_explained(
    refusing_browser: object, speech_stack: Stack, request: pytest.FixtureRequest
) -> None:
    for ui in _page(refusing_browser, speech_stack, request, DESKTOP):
        ui.wait_ready()
        ui.page.locator("#mic-btn").click()
        expect(ui.page.locator(".line.error").last).to_contain_text("microphone permission refused")
        expect(ui.page.locator("#mic-btn")).to_have_text("[mic]")
        ui.shot("refused")
        # the refusal is not an uncaught error: open_page's check passes after this
        ui.errors[:] = [e for e in ui.errors if "Permission" not in e]


def test_missing_speech_models_are_explained(ui: Ui) -> None:
    """The ordinary stack (chat, slow, paint) has no stt or tts model."""
    ui.wait_ready()
    ui.page.locator("#mic-btn").click()
    errors = ui.page.locator(".line.error")
    expect(errors.last).to_contain_text("no speech-to-text (stt) model is configured")
    ui.type_line("/say hello")
    expect(errors.last).to_contain_text("no text-to-speech (tts) model is configured")
    ui.type_line("/speak on")
    expect(ui.page.locator("#speak-btn")).to_have_attribute("aria-pressed", "false")
