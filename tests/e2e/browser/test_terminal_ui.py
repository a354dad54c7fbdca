"""The web UI in real headless Chromium against the real proxy, manager and model servers.

Each test drives the page the way a user does (typing at the prompt, picking
files, dropping and pasting images) and checks what the terminal shows. The
model servers are fakevllm processes: their answers are deterministic
("[<model>] <your text>", streamed word by word; images are solid-colour PNGs).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.browser.uistack import (
    API_KEY,
    SCREENSHOTS,
    Stack,
    Ui,
    natural_width,
    record_answer_text,
)

pytestmark = pytest.mark.browser

expect = pytest.importorskip(
    "playwright.sync_api", reason="Python playwright is not installed"
).expect


def png_bytes(
    size: tuple[int, int] = (48, 48), colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def test_chat_streams_the_answer_token_by_token_and_survives_a_reload(ui: Ui) -> None:
    page = ui.page
    ui.wait_ready()
    ui.shot("ready")
    words = " ".join(f"w{i}" for i in range(1, 31))  # 30 words, 0.12 s apart
    record_answer_text(ui)
    ui.type_line(f"count with me {words}")

    expect(page.locator(".entry.user").last).to_contain_text("chat> count with me w1 w2")
    streaming = page.locator(".entry.answer.streaming")
    expect(streaming.locator(".cursor")).to_be_visible()
    expect(page.locator("#send-btn")).to_have_text("[stop]")
    ui.shot("streaming")

    answer = page.locator(".entry.answer").last
    full = f"[chat] count with me {words}"
    expect(answer.locator(".answer-body")).to_have_text(full)
    expect(answer).not_to_have_class(re.compile(r"\bstreaming\b"))
    expect(answer.locator(".cursor")).to_have_count(0)
    expect(page.locator("#send-btn")).to_have_text("[send]")
    seen = page.evaluate("window.__seen")
    partial = [t for t in seen if t != full]
    # Token by token: the answer was on screen in several growing pieces before it was whole.
    assert len(partial) >= 3, seen
    assert all(full.startswith(t) for t in partial), seen
    assert sorted(partial, key=len) == partial, seen
    expect(page.locator("#status")).to_have_attribute("data-state", "ready")
    ui.shot("answered")

    page.reload()
    ui.wait_ready()
    expect(page.locator(".entry.user")).to_contain_text([f"chat> count with me {words}"])
    expect(page.locator(".entry.answer .answer-body")).to_have_text([full])
    expect(page.locator("#scrollback")).to_contain_text("restored 2 lines")
    ui.shot("reloaded")


def test_stop_mid_answer_keeps_what_was_written_and_frees_the_model(ui: Ui) -> None:
    page = ui.page
    ui.wait_ready()
    long = " ".join(f"word{i}" for i in range(60))
    ui.type_line(long)
    streaming = page.locator(".entry.answer.streaming .answer-body")
    expect(streaming).to_contain_text("word2")
    page.locator("#prompt-input").press("Escape")

    answer = page.locator(".entry.answer").last
    expect(answer.locator(".stopped")).to_have_text("^C stopped")
    text = answer.locator(".answer-body").text_content() or ""
    assert text.startswith("[chat] word0 word1 word2")
    assert "word59" not in text
    expect(page.locator("#send-btn")).to_have_text("[send]")
    ui.shot("stopped")

    # The stopped request released its lease: the next one is answered.
    ui.type_line("and again")
    ui.answered("[chat] and again")

    # The stopped answer stays stopped after a reload.
    page.reload()
    ui.wait_ready()
    expect(page.locator(".entry.answer").first.locator(".stopped")).to_have_text("^C stopped")


def test_models_lists_types_and_states_and_model_switches(ui: Ui, stack: Stack) -> None:
    page = ui.page
    stack.ensure("chat")
    ui.wait_ready()
    ui.type_line("/models")
    table = page.locator("table.models").last
    expect(table.locator("tr[data-model=chat] td")).to_have_text(
        ["*", "chat", "text", "vllm", "ready", re.compile(r"echoes.* · tools$")]
    )
    expect(table.locator("tr[data-model=paint] td")).to_have_text(
        [
            "",
            "paint",
            "image",
            "diffusers",
            "stopped",
            re.compile(r"sizes 64x64 128x128 · GPU 2048 MiB"),
        ]
    )
    expect(table.locator("tr[data-model=slow] td").nth(2)).to_have_text("text")
    ui.shot("models")

    ui.type_line("/model slow")
    expect(page.locator("#prompt-label")).to_have_text("slow>")
    expect(page.locator(".line.ok").last).to_contain_text("switched to slow")
    ui.type_line("which model are you")
    ui.answered("[slow] which model are you")
    ui.shot("switched")

    # The choice is kept in the browser.
    page.reload()
    expect(page.locator("#prompt-label")).to_have_text("slow>")


MID_WORD_BREAKS = """(selector) => {
    // Every place where a cell's text goes on to a new line without a space before it.
    const found = [];
    for (const cell of document.querySelectorAll(selector)) {
      const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
      let top = null, space = false;
      for (let node; (node = walker.nextNode()); ) {
        for (let i = 0; i < node.data.length; i++) {
          if (/\\s/.test(node.data[i])) {
            space = true;
            continue;
          }
          const range = document.createRange();
          range.setStart(node, i);
          range.setEnd(node, i + 1);
          const rect = range.getClientRects()[0];
          if (!rect) continue;
          if (top !== null && rect.top > top + rect.height / 2 && !space) {
            found.push(`${cell.textContent} (before "${node.data.slice(i, i + 8)}")`);
          }
          top = rect.top;
          space = false;
        }
      }
    }
    return found;
}"""


@pytest.mark.parametrize("width", [1100, 390])
def test_models_table_columns_fit_their_content(ui: Ui, width: int) -> None:
    """Regression: at 1100 px /models wrapped names and states mid-word
    ('smollm' / '2', 'stoppe' / 'd') to make room for a long description."""
    page = ui.page
    page.set_viewport_size({"width": width, "height": 800})
    ui.wait_ready()
    ui.type_line("/models")
    table = page.locator("table.models").last
    expect(table.locator("tr[data-model=slow] td.about")).to_contain_text(
        "visible in the status bar"
    )
    ui.shot(f"models-{width}px")
    breaks = page.evaluate(MID_WORD_BREAKS, "table.models td, table.models th")
    assert breaks == [], breaks
    # The description still wraps (at spaces) rather than widening the page.
    assert page.evaluate(
        "document.getElementById('scrollback').scrollWidth"
        " <= document.getElementById('scrollback').clientWidth"
    )


def test_loading_indicator_shows_the_swap_and_its_elapsed_time(ui: Ui, stack: Stack) -> None:
    page = ui.page
    stack.ensure("chat")
    ui.wait_ready()
    ui.type_line("/model slow")
    expect(page.locator("#prompt-label")).to_have_text("slow>")
    ui.type_line("hello after the swap")

    status = page.locator("#status")
    # The manager's events, relayed by the proxy: which model, that it swaps, for how long.
    expect(status).to_have_attribute("data-phase", re.compile("swapping|loading|stopping"))
    expect(status).to_have_attribute("data-phase", "swapping")
    expect(status).to_have_attribute("data-model", "slow")
    expect(page.locator("#status-text")).to_contain_text("swapping chat → slow")
    expect(page.locator("#status-text")).to_contain_text("loading slow")
    expect(page.locator("#status-clock")).to_have_text(re.compile(r"^0:0[1-9]$"))
    # The waiting line in the scrollback says the same.
    expect(page.locator(".line.pending")).to_contain_text("loading slow")
    ui.shot("swapping")

    ui.answered("[slow] hello after the swap")
    expect(status).to_have_attribute("data-phase", "idle")
    expect(page.locator("#status-text")).to_have_text("slow · ready · resident: slow")
    expect(page.locator("#status-clock")).to_have_text("")
    ui.shot("swapped")


def test_image_generation_renders_inline_opens_full_size_and_downloads(
    ui: Ui, tmp_path: Path
) -> None:
    page = ui.page
    ui.wait_ready()
    ui.type_line("/image -s 64x64 a lighthouse at dusk")
    expect(page.locator(".entry.user").last).to_contain_text("paint> /image a lighthouse at dusk")
    expect(page.locator(".line.pending")).to_contain_text("paint")
    ui.shot("painting")

    card = page.locator(".entry.images .image-card").last
    img = card.locator("img")
    expect(img).to_be_visible()
    assert natural_width(img) == 64
    expect(card.locator("figcaption")).to_contain_text("paint")
    expect(card.locator(".img-meta")).to_have_text("64x64")
    ui.shot("painted")

    # Full size, in a dialog, without the retro effect.
    card.locator("button.crt").click()
    dialog = page.locator("#lightbox")
    expect(dialog).to_be_visible()
    assert natural_width(dialog.locator("img")) == 64
    ui.shot("full-size")
    dialog.get_by_role("button", name="close").click()
    expect(dialog).to_be_hidden()

    # Saved as a real PNG.
    with page.expect_download() as info:
        card.get_by_text("[save]").click()
    download = info.value
    assert download.suggested_filename.endswith(".png")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert Image.open(saved).size == (64, 64)

    # The picture is still there after a reload (kept in the browser's IndexedDB).
    page.reload()
    ui.wait_ready()
    again = page.locator(".entry.images img").last
    expect(again).to_be_visible()
    assert natural_width(again) == 64


@pytest.mark.parametrize(
    ("served", "kind", "shown"),
    [
        # What a model server's `url` answer may point at, and whether the UI shows it.
        ("png", "image/png", True),
        ("html", "text/html", False),  # a page: as a blob opened in a tab, it runs in our origin
        ("html", "image/png", False),  # says PNG, is not
        ("png", "image/svg+xml", False),  # SVG runs scripts too; only PNG, JPEG, WebP pass
        ("gif", "image/gif", False),
    ],
)
def test_an_image_url_answer_is_shown_only_if_it_is_a_png_jpeg_or_webp(
    ui: Ui, served: str, kind: str, shown: bool
) -> None:
    """A model server (or anything between) answering `url` chooses the picture's type.
    Stand in for it at the HTTP layer: /image is a job (docs/jobs.md), started for real
    over /rpc; its event stream is replaced by one whose `result` (the model server's
    ImagesResponse) has a url that points at bytes of `served` sent as `kind`."""
    page = ui.page
    body = {
        "png": png_bytes((32, 32)),
        "html": b"<!doctype html><script>window.opener.pwned = 1</script>",
        "gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    }[served]
    events = [
        ("state", {"state": "STARTED", "attempt": 1}),
        ("result", {"created": 0, "data": [{"url": "/served/picture"}]}),
        ("state", {"state": "SUCCESS", "error": None}),
        ("end", {"state": "SUCCESS"}),
    ]
    stream = "".join(
        f"id: {i}\nevent: {event}\ndata: {json.dumps(data)}\n\n"
        for i, (event, data) in enumerate(events, start=1)
    )
    page.route(
        "**/stream/*",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=stream),
    )
    page.route(
        "**/served/picture",
        lambda route: route.fulfill(status=200, headers={"Content-Type": kind}, body=body),
    )
    ui.wait_ready()
    ui.type_line("/image -s 64x64 from a url")
    if shown:
        img = page.locator(".entry.images img").last
        expect(img).to_be_visible()
        assert natural_width(img) == 32
        expect(page.locator(".line.error")).to_have_count(0)
    else:
        error = page.locator(".line.error").last
        expect(error).to_contain_text("not PNG, JPEG or WebP")
        expect(error).to_contain_text("model_server")
        expect(page.locator(".entry.images .image-card")).to_have_count(0)
    ui.shot(f"url-{served}-as-{kind.replace('/', '-')}")
    assert page.evaluate("window.pwned ?? null") is None


def test_upload_with_the_button_edits_the_image(ui: Ui, tmp_path: Path) -> None:
    page = ui.page
    source = tmp_path / "source.png"
    source.write_bytes(png_bytes((48, 48)))
    ui.wait_ready()
    ui.type_line("/model paint")
    expect(page.locator("#prompt-label")).to_have_text("paint>")
    # With an image model, a plain line is the picture's prompt.
    ui.type_line("a red square")
    first = page.locator(".entry.images .image-card")
    expect(first).to_have_count(1)
    expect(first.locator("figcaption")).not_to_contain_text("edit")
    assert natural_width(first.locator("img")) == 64  # the model's first size

    page.locator("#file-input").set_input_files(str(source))
    chip = page.locator("#attachment")
    expect(chip).to_be_visible()
    expect(chip).to_contain_text("source.png 48x48")
    expect(page.locator(".line.ok").last).to_contain_text("your next line edits it")
    ui.shot("attached")

    ui.type_line("make it blue")
    expect(chip).to_be_hidden()
    user = page.locator(".entry.user").last
    expect(user).to_contain_text("paint> /image make it blue [+img source.png]")
    result = page.locator(".entry.images .image-card").last
    expect(result.locator("figcaption")).to_contain_text("paint edit")
    assert natural_width(result.locator("img")) > 0
    ui.shot("edited")


def test_drop_and_paste_attach_an_image_for_a_vision_message(ui: Ui) -> None:
    page = ui.page
    ui.wait_ready()
    b64 = base64.b64encode(png_bytes((40, 30))).decode()
    make_file = """(b64, name) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name, {type: 'image/png'}));
        return data;
    }"""
    # Drag and drop onto the page.
    page.evaluate(
        f"""([b64]) => {{
        const data = ({make_file})(b64, 'dropped.png');
        for (const type of ['dragenter', 'dragover', 'drop']) {{
          document.getElementById('scrollback').dispatchEvent(
            new DragEvent(type, {{dataTransfer: data, bubbles: true, cancelable: true}}));
        }}
    }}""",
        [b64],
    )
    expect(page.locator("#attachment")).to_contain_text("dropped.png 40x30")
    expect(page.locator("#drop")).to_be_hidden()
    ui.type_line("/detach")
    expect(page.locator("#attachment")).to_be_hidden()

    # Paste into the prompt.
    page.evaluate(
        f"""([b64]) => {{
        const data = ({make_file})(b64, 'clip.png');
        document.getElementById('prompt-input').dispatchEvent(
          new ClipboardEvent('paste', {{clipboardData: data, bubbles: true, cancelable: true}}));
    }}""",
        [b64],
    )
    expect(page.locator("#attachment")).to_contain_text("clip.png 40x30")
    ui.shot("pasted")

    # Sent to a text model, the image goes along as an OpenAI image_url content part.
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        ui.type_line("what is in this picture")
    body = json.loads(sent.value.post_data or "{}")
    content = body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "what is in this picture"}
    assert content[1]["type"] == "image_url"
    assert content[1]["image_url"]["url"] == f"data:image/png;base64,{b64}"
    expect(page.locator(".entry.user").last).to_contain_text("[+img clip.png]")
    ui.answered("[chat] what is in this picture")
    ui.shot("vision-message")


def test_unknown_model_commands_and_proxy_errors_print_as_terminal_messages(ui: Ui) -> None:
    page = ui.page
    ui.wait_ready()
    ui.type_line("/model nosuch")
    error = page.locator(".line.error").last
    expect(error).to_contain_text("unknown model 'nosuch'")
    expect(error).to_contain_text("known: chat, paint, slow")
    expect(page.locator("#prompt-label")).to_have_text("chat>")

    ui.type_line("/modle chat")
    expect(page.locator(".line.error").last).to_contain_text(
        "unknown command /modle (did you mean /model?)"
    )

    # An error envelope from the proxy (n over the model's max_n) is a message, not a broken page.
    ui.type_line("/image -n 5 five lighthouses")
    proxy_error = page.locator(".line.error").last
    expect(proxy_error).to_contain_text("400")
    expect(proxy_error).to_contain_text(re.compile(r"\bn\b"))
    ui.shot("errors")

    # The terminal still works.
    ui.type_line("still here")
    ui.answered("[chat] still here")


def test_prompt_history_with_arrow_keys_and_clear(ui: Ui) -> None:
    page = ui.page
    ui.wait_ready()
    prompt = page.locator("#prompt-input")
    ui.type_line("/help")
    expect(page.locator("table.help")).to_contain_text("/image [-n N] [-s WxH] PROMPT")
    ui.type_line("first line")
    ui.answered("[chat] first line")
    prompt.press_sequentially("a draft")
    prompt.press("ArrowUp")
    expect(prompt).to_have_value("first line")
    prompt.press("ArrowUp")
    expect(prompt).to_have_value("/help")
    prompt.press("ArrowDown")
    expect(prompt).to_have_value("first line")
    prompt.press("ArrowDown")
    expect(prompt).to_have_value("a draft")
    # The mirror draws the line with the block cursor after it.
    expect(page.locator("#prompt-mirror .cursor")).to_have_count(1)
    expect(page.locator("#prompt-mirror")).to_contain_text("a draft")
    ui.shot("history")

    prompt.fill("")
    ui.type_line("/clear")
    expect(page.locator(".entry")).to_have_count(0)
    expect(page.locator("#scrollback")).to_contain_text("new conversation")
    page.reload()
    ui.wait_ready()
    expect(page.locator(".entry")).to_have_count(0)
    prompt.press("ArrowUp")
    expect(prompt).to_have_value("/clear")


def test_api_key_is_asked_for_checked_and_kept(auth_ui: Ui) -> None:
    ui = auth_ui
    page = ui.page
    expect(page.locator("#prompt-label")).to_have_text("key>")
    expect(page.locator(".line.warn").first).to_contain_text("needs an API key")
    ui.input.press_sequentially("not-the-key")
    # Drawn masked.
    expect(page.locator("#prompt-mirror")).to_have_text(re.compile(r"^\*{11}"))
    ui.shot("asked")
    ui.input.press("Enter")
    expect(page.locator(".line.error").last).to_contain_text("401")
    expect(page.locator("#prompt-label")).to_have_text("key>")

    ui.type_line(API_KEY)
    expect(page.locator(".line.ok").last).to_contain_text("key accepted")
    ui.wait_ready()
    ui.type_line("hello with a key")
    ui.answered("[chat] hello with a key")
    ui.shot("accepted")

    page.reload()
    ui.wait_ready()
    expect(page.locator(".line.warn")).to_have_count(0)
    assert page.evaluate("localStorage.getItem('homelab-ai.apiKey')") == API_KEY


def test_the_page_says_whose_key_it_uses_and_usage_counts_a_chat(ui: Ui) -> None:
    page = ui.page
    ui.wait_ready()
    # The open proxy: every request is the admin "anonymous" (docs/keys.md).
    expect(page.locator(".line.dim", has_text="signed in as")).to_contain_text(
        "signed in as anonymous (admin)"
    )
    ui.type_line("hello usage")
    ui.answered("[chat] hello usage")
    ui.type_line("/usage")
    row = page.locator('table.usage tr[data-key="anonymous"][data-model="chat"]')
    expect(row).to_be_visible()
    assert int(row.locator("td").nth(2).inner_text()) >= 1  # requests
    ui.type_line("/whoami")
    expect(page.locator(".line.info").last).to_contain_text("you are anonymous (admin)")
    ui.shot("usage")


def test_phone_viewport_stays_readable(phone: Ui) -> None:
    page = phone.page
    phone.wait_ready()
    phone.type_line("hello from a phone, a fairly long line that has to wrap on a narrow screen")
    phone.answered(
        "[chat] hello from a phone, a fairly long line that has to wrap on a narrow screen"
    )
    phone.type_line("/models")
    expect(page.locator("table.models")).to_be_visible()
    phone.type_line("/image -s 128x128 a picture on a small screen")
    img = page.locator(".entry.images img")
    # The swap chat -> paint takes SLOW_LOAD_S plus the stop: wait for it, not the
    # 5 s default (a deadline, not a speed check).
    expect(img).to_be_visible(timeout=30_000)
    assert natural_width(img) == 128
    page.wait_for_function("() => document.querySelector('.entry.images .crt.loaded') !== null")
    box = img.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390
    # No sideways scrolling; the prompt and its buttons are on screen.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate(
        "document.getElementById('scrollback').scrollWidth <= document.getElementById('scrollback').clientWidth"
    )
    for selector in ("#prompt-input", "#send-btn", "#attach-btn"):
        box = page.locator(selector).bounding_box()
        assert (
            box
            and box["x"] >= 0
            and box["x"] + box["width"] <= 390
            and box["y"] + box["height"] <= 844
        ), selector
    # Big enough text for a phone, and no zoom-on-focus (16px or more in the field).
    assert (
        page.evaluate(
            "parseFloat(getComputedStyle(document.getElementById('prompt-input')).fontSize)"
        )
        >= 16
    )
    phone.shot("phone")


def test_set_options_are_sent_with_each_message(ui: Ui) -> None:
    page = ui.page
    ui.wait_ready()
    ui.type_line("/set max_tokens 3")
    expect(page.locator(".line.ok").last).to_have_text("chat options: max_tokens=3")
    ui.type_line("/set temperature hot")
    expect(page.locator(".line.error").last).to_contain_text(
        "temperature wants a number from 0 to 2"
    )
    ui.type_line("/set seed 1")
    expect(page.locator(".line.error").last).to_contain_text(
        "/set knows max_tokens, temperature, top_p"
    )
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        ui.type_line("one two three four five")
    assert json.loads(sent.value.post_data or "{}")["max_tokens"] == 3
    # The model server honours it: three words ("[chat]" is the first).
    ui.answered("[chat] one two")
    expect(page.locator(".entry.answer").last.locator(".truncated")).to_contain_text(
        "cut off at max_tokens"
    )

    page.reload()
    ui.wait_ready()
    ui.type_line("/set")
    expect(page.locator(".line.ok").last).to_have_text("chat options: max_tokens=3")
    ui.type_line("/set max_tokens")
    expect(page.locator(".line.ok").last).to_have_text("chat options: the model's defaults")
    ui.type_line("one two three four five")
    ui.answered("[chat] one two three four five")


STRICT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def test_the_page_works_under_a_strict_content_security_policy(ui: Ui, tmp_path: Path) -> None:
    """No inline script or style, no eval, no data: URL: the proxy can send STRICT_CSP.
    The page is served with it here (added to the proxy's answer for the page), and
    every part of the UI is used while the browser reports what the policy blocks."""
    page = ui.page
    page.add_init_script(
        """window.__csp = [];
           document.addEventListener('securitypolicyviolation', (e) =>
             window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));"""
    )

    def with_csp(route) -> None:  # noqa: ANN001 (a playwright Route)
        answer = route.fetch()
        headers = {**answer.headers, "content-security-policy": STRICT_CSP}
        route.fulfill(response=answer, headers=headers)

    page.route(lambda url: url.rstrip("/").count("/") == 2, with_csp)  # the page itself
    with page.expect_response(lambda r: r.request.resource_type == "document") as loaded:
        page.reload()
    assert loaded.value.headers.get("content-security-policy") == STRICT_CSP
    ui.wait_ready()

    ui.type_line("run `ls` then **this**: ``` not a fence")
    ui.answered("[chat] run ls then this: ``` not a fence")
    ui.type_line("/help")
    ui.type_line("/models")
    expect(page.locator("table.models")).to_be_visible()
    ui.type_line("/image -s 64x64 a picture under a policy")
    card = page.locator(".entry.images .image-card").last
    assert natural_width(card.locator("img")) == 64
    card.locator("button.crt").click()
    expect(page.locator("#lightbox")).to_be_visible()
    page.locator("#lightbox").get_by_role("button", name="close").click()
    source = tmp_path / "upload.png"
    source.write_bytes(png_bytes((40, 40)))
    page.locator("#file-input").set_input_files(str(source))
    expect(page.locator("#attachment img")).to_be_visible()
    ui.shot("strict-csp")

    assert page.evaluate("window.__csp") == []
    refused = [e for e in ui.errors if "Content Security Policy" in e]
    assert refused == []


def test_terminal_screenshot_with_an_answer_and_an_image(ui: Ui) -> None:
    """A whole screen (a streamed answer and a rendered image) as
    test-artifacts/screenshots/terminal.png. The README's picture comes from the same
    screen with real models (test_real_models.py)."""
    page = ui.page
    ui.wait_ready()
    ui.type_line("/models")
    ui.type_line("say hello to the home lab")
    ui.answered("[chat] say hello to the home lab")
    ui.type_line("/image -s 128x128 a neon terminal")
    img = page.locator(".entry.images img").last
    expect(img).to_be_visible()
    assert natural_width(img) == 128
    page.wait_for_function("() => document.querySelector('.entry.images .crt.loaded') !== null")
    page.wait_for_timeout(1200)  # let the scan-in animation finish, for the picture only
    ui.input.press_sequentially("/help")
    shutil.copyfile(ui.shot("terminal"), SCREENSHOTS / "terminal.png")
