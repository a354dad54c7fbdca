"""The UI's pure modules, run in real Chromium as the page loads them (from the real proxy).

These pin down edge cases that are slow or awkward to reach through the page:
an SSE chunk split inside "\\r\\n", an unclosed code fence, a model answer that
looks like HTML, the chat context rules, a server clock far off.
"""

from __future__ import annotations

import pytest

from bench.ui_markdown import HARD_ANSWER
from tests.e2e.browser.uistack import Stack, Ui

pytestmark = pytest.mark.browser


def run(ui: Ui, body: str) -> object:
    """Evaluate `body` (an async function body) with the UI's modules imported as `m`."""
    # The body goes into the function's source, not through `new Function` in the page:
    # the proxy's Content-Security-Policy (script-src 'self') refuses eval there.
    return ui.page.evaluate(
        """async () => {
          const names = ['sse', 'markdown', 'input', 'commands', 'conversation', 'status', 'dom', 'api', 'scrollback'];
          const m = {};
          for (const n of names) Object.assign(m, await import(`/static/js/${n}.js`));
          return await (async () => {\n"""
        + body
        + """\n})();
        }"""
    )


def test_sse_parser_handles_any_chunking(ui: Ui) -> None:
    stream = (
        ": comment\r\n"
        'event: state\r\ndata: {"model":"a"}\r\n\r\n'
        "data: line one\ndata: line two\n\n"
        'id: 7\nevent: swap\ndata:{"to":"b"}\n\n'
        "data: [DONE]"
    )
    expected = [
        {"event": "state", "data": '{"model":"a"}', "id": ""},
        {"event": "message", "data": "line one\nline two", "id": ""},
        {"event": "swap", "data": '{"to":"b"}', "id": "7"},
        {"event": "message", "data": "[DONE]", "id": "7"},
    ]
    # Whole, one character at a time, and split right between "\r" and "\n".
    for size in (len(stream), 1, 2, 3, 7):
        got = run(
            ui,
            f"""const p = new m.SseParser(); const s = {stream!r}; const out = [];
                for (let i = 0; i < s.length; i += {size}) out.push(...p.feed(s.slice(i, i + {size})));
                out.push(...p.end()); return out;""",
        )
        assert got == expected, size


def test_markdown_renders_code_blocks_and_never_markup(ui: Ui) -> None:
    blocks = run(
        ui,
        "return m.splitBlocks('intro\\n```python\\nx = 1\\n\\ny = 2\\n```\\nafter\\n~~~\\nstill open');",
    )
    assert blocks == [
        {"kind": "text", "text": "intro"},
        {"kind": "code", "lang": "python", "text": "x = 1\n\ny = 2", "closed": True},
        {"kind": "text", "text": "after"},
        {"kind": "code", "lang": "", "text": "still open", "closed": False},
    ]
    rendered = run(
        ui,
        """const host = document.createElement('div');
           host.appendChild(m.renderMarkdown('use `ls -la` and **care**: <img src=x onerror="window.pwned=1">\\n```sh\\necho <b>hi</b>\\n```'));
           document.body.appendChild(host);
           await new Promise(r => setTimeout(r, 50));
           return {
             imgs: host.querySelectorAll('img, b').length,
             inline: [...host.querySelectorAll('code.inline')].map(c => c.textContent),
             strong: host.querySelector('strong')?.textContent,
             lang: host.querySelector('figure.code .code-lang')?.textContent,
             code: host.querySelector('figure.code code')?.textContent,
             copy: host.querySelector('figure.code button')?.textContent,
             pwned: window.pwned ?? null,
           };""",
    )
    assert rendered == {
        "imgs": 0,
        "inline": ["ls -la"],
        "strong": "care",
        "lang": "sh",
        "code": "echo <b>hi</b>",
        "copy": "[copy]",
        "pwned": None,
    }


def test_markdown_spans_match_the_old_regex_on_random_text(ui: Ui) -> None:
    """The linear scanner finds exactly the spans the old (quadratic) regex found."""
    mismatches = run(
        ui,
        r"""const old = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*\n]+)\*\*/g;
           const ref = (t) => [...t.matchAll(old)].map(m => ({kind: m[1] ? 'code' : 'bold',
             at: m.index, end: m.index + m[0].length, text: m[1] ? m[2] : m[3]}));
           let seed = 42;
           const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
           const alphabet = ['`', '`', '`', '*', '*', 'a', ' ', '\n'];
           const bad = [];
           for (let t = 0; t < 20000; t++) {
             let s = '';
             for (let i = 1 + Math.floor(rnd() * 24); i > 0; i--) s += alphabet[Math.floor(rnd() * alphabet.length)];
             if (JSON.stringify(ref(s)) !== JSON.stringify(m.inlineSpans(s))) bad.push(s);
           }
           return bad.slice(0, 5);""",
    )
    assert mismatches == []


def test_a_116_kb_adversarial_answer_renders_whole_and_safely(ui: Ui) -> None:
    got = run(
        ui,
        HARD_ANSWER
        + """const host = document.createElement('div');
             host.appendChild(m.renderMarkdown(answer));
             return {
               size: answer.length,
               blocks: host.querySelectorAll('figure.code').length,
               spans: host.querySelectorAll('code.inline').length,
               bold: host.querySelectorAll('strong').length,
               markup: host.querySelectorAll('script, img, b, a').length,
               langs: [...new Set([...host.querySelectorAll('.code-lang')].map(l => l.textContent))],
               units: parts.length / 4,
             };""",
    )
    assert got["size"] >= 116 * 1024
    units = got["units"]
    assert got["blocks"] == 2 * units
    # The fence-like line is text, not a code block named "ccc...".
    assert sorted(got["langs"]) == ["code", "js"]
    assert got["spans"] == 2 * units
    assert got["bold"] == units
    assert got["markup"] == 0


def test_a_streaming_answer_is_drawn_once_per_frame_and_incrementally(ui: Ui) -> None:
    got = run(
        ui,
        HARD_ANSWER
        + """const root = document.createElement('div');
             document.body.appendChild(root);
             const screen = new m.Scrollback(root);
             let frames = 0, streaming = true;
             const tick = () => { frames++; if (streaming) requestAnimationFrame(tick); };
             requestAnimationFrame(tick);
             const stream = screen.stream('x');
             const piece = 1024;
             let chunks = 0;
             for (let i = 0; i < answer.length; i += piece) {
               stream.append(answer.slice(i, i + piece));
               chunks++;
               // Several pieces per frame, as a fast model sends them.
               if (chunks % 3 === 0) await new Promise(r => requestAnimationFrame(r));
             }
             stream.finish();
             streaming = false;
             const reference = document.createElement('div');
             reference.appendChild(m.renderMarkdown(answer));
             const body = root.querySelector('.answer-body');
             // Each draw parses only the blocks not final yet: a block of B characters
             // arriving in pieces is parsed about B / piece times.
             const bound = m.scanBlocks(answer)
               .map(b => b.text.length + 8)
               .reduce((sum, b) => sum + b + 2 * b * Math.ceil(b / piece), 0);
             return {
               size: answer.length, chunks, frames, renders: stream.renders, parsed: stream.parsed, bound,
               same: body.innerHTML === reference.innerHTML,
               cursor: root.querySelectorAll('.cursor').length,
             };""",
    )
    # Drawn at most once per animation frame (plus the first and the final draw),
    # and while it streamed, not only at the end.
    assert got["renders"] <= got["frames"] + 2, got
    assert got["renders"] >= got["chunks"] // 6, got
    # Incremental: a block is parsed again only while it is not final, so the work grows
    # with the blocks, not with the answer times the frames (redrawing it all each frame
    # parsed about renders x size / 2).
    assert got["parsed"] <= got["bound"], got
    assert got["parsed"] < got["renders"] * got["size"] / 4, got
    # And the result is what rendering the whole answer at once gives.
    assert got["same"]
    assert got["cursor"] == 0


def test_a_streaming_answer_shows_at_every_draw_what_a_whole_render_shows(ui: Ui) -> None:
    """Incremental drawing keeps finished blocks; at every draw the answer must still look
    exactly as the text so far rendered at once (random texts, random piece sizes)."""
    mismatches = run(
        ui,
        r"""let seed = 7;
           const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
           const alphabet = ['```', '```py', '~~~', '````', '`', '**', 'a', ' ', '\n', '\n', '\n'];
           const root = document.createElement('div');
           document.body.appendChild(root);
           const screen = new m.Scrollback(root);
           const bad = [];
           for (let t = 0; t < 300 && bad.length < 3; t++) {
             let text = '';
             for (let i = Math.floor(rnd() * 40); i > 0; i--) text += alphabet[Math.floor(rnd() * alphabet.length)];
             const stream = screen.stream('x');
             const body = stream.node.querySelector('.answer-body');
             for (let i = 0; i < text.length; ) {
               const n = 1 + Math.floor(rnd() * 6);
               stream.append(text.slice(i, i + n));
               i += n;
               stream.render();  // what the next animation frame does
               const shown = body.cloneNode(true);
               shown.querySelector('.cursor')?.remove();
               const whole = document.createElement('div');
               whole.appendChild(m.renderMarkdown(stream.text));
               if (shown.innerHTML !== whole.innerHTML) { bad.push(stream.text); break; }
             }
             stream.finish();
           }
           return bad;""",
    )
    assert mismatches == []


def test_input_parsing(ui: Ui) -> None:
    got = run(
        ui,
        """return [' ', 'hello', '/help', '/Model  big-one ', '//etc/passwd', '/ spaced', '/image\\nmulti line']
             .map(m.parseInput);""",
    )
    assert got == [
        {"kind": "empty"},
        {"kind": "chat", "text": "hello"},
        {"kind": "command", "name": "help", "args": ""},
        {"kind": "command", "name": "model", "args": "big-one"},
        {"kind": "chat", "text": "/etc/passwd"},
        {"kind": "chat", "text": "/ spaced"},
        {"kind": "command", "name": "image", "args": "multi line"},
    ]
    args = run(
        ui,
        """return ['-n 2 -s 64x64 a cat', '--size=128x128 --n=1 dog', 'plain prompt', '-n 0 x',
                   '-s big x', '-n 2', ''].map(m.parseImageArgs);""",
    )
    assert args[:3] == [
        {"prompt": "a cat", "n": 2, "size": "64x64"},
        {"prompt": "dog", "n": 1, "size": "128x128"},
        {"prompt": "plain prompt"},
    ]
    assert "1 to 16" in args[3]["error"]
    assert "1024x1024" in args[4]["error"]
    assert args[5]["error"].startswith("usage:") and args[6]["error"].startswith("usage:")
    near = run(
        ui,
        "return [m.closest('modle', ['models', 'model', 'help']), m.closest('zzz', ['models'])];",
    )
    assert near[0][0] == "model"
    assert near[1] == []


def test_help_is_drawn_from_the_command_table(ui: Ui) -> None:
    table = run(
        ui,
        """return {
             commands: m.COMMANDS.map(c => [c.usage, c.summary]),
             keys: m.KEYS.map(k => [k.usage, k.summary]),
             runs: m.COMMANDS.every(c => typeof c.run === 'function' && c.names.length > 0),
             found: ['help', 'img', 'cls', 'upload', 'theme', 'nosuch'].map(n => m.findCommand(n)?.names[0] ?? null),
             unknown: m.unknownCommand('modle'),
           };""",
    )
    assert table["runs"]
    assert table["found"] == ["help", "image", "clear", "attach", "theme", None]
    assert (
        table["unknown"]
        == "unknown command /modle (did you mean /model?) · /help lists the commands"
    )
    names = {c[0].split(" ")[0] for c in table["commands"]}
    assert names == {
        "/help",
        "/models",
        "/model",
        "/image",
        "/attach",
        "/detach",
        "/set",
        "/clear",
        "/key",
        "/theme",
        "/whoami",
        "/usage",
        "/say",
        "/speak",
        "/voices",
    }

    ui.wait_ready()
    ui.type_line("/help")
    ui.page.wait_for_selector("table.help")
    rows = ui.page.evaluate(
        """() => [...document.querySelectorAll('table.help tr:not(.gap)')]
                 .map(tr => [...tr.cells].map(td => td.textContent))"""
    )
    # One row per entry of the table, in its order, then the keys.
    assert rows == table["commands"] + table["keys"]


def test_chat_context_rules(ui: Ui) -> None:
    got = run(
        ui,
        """const e = (t, text, extra = {}) => ({id: String(Math.random()), t, text, model: 'x', mode: 'chat', ...extra});
           const entries = [
             e('user', 'lost question'),                      // never answered: dropped
             e('user', 'first'), e('assistant', 'one'),
             e('user', 'draw', {mode: 'image'}),              // an image prompt: not chat
             {id: 'i', t: 'image', model: 'p', prompt: 'draw', images: []},
             e('user', 'look', {image: {id: 'a', name: 'a.png'}}), e('assistant', 'half', {stopped: true}),
             {id: 'r', t: 'error', text: 'boom'},
             e('user', 'now this'),
           ];
           return [m.buildMessages(entries, null), m.buildMessages(entries, 'data:image/png;base64,AAAA')];""",
    )
    plain, with_image = got
    assert plain == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "look\n[an image was attached: a.png]"},
        {"role": "assistant", "content": "half"},
        {"role": "user", "content": "now this"},
    ]
    assert with_image[-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "now this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
    trimmed = run(
        ui,
        """const entries = [];
           for (let i = 0; i < 50; i++) entries.push({id: 'u' + i, t: 'user', text: 'q' + i, model: 'x', mode: 'chat'},
                                                     {id: 'a' + i, t: 'assistant', text: 'a' + i, model: 'x'});
           entries.push({id: 'n', t: 'user', text: 'last', model: 'x', mode: 'chat'});
           const out = m.buildMessages(entries, null);
           return {n: out.length, first: out[0], last: out[out.length - 1]};""",
    )
    assert trimmed["n"] <= 40
    assert trimmed["first"]["role"] == "user"
    assert trimmed["last"] == {"role": "user", "content": "last"}


def test_model_states_describe_a_swap(ui: Ui) -> None:
    got = run(
        ui,
        """const mk = () => document.createElement('span');
           const s = new m.ModelStates({bar: document.createElement('div'), text: mk(), clock: mk(), live: mk()});
           const now = Date.now() / 1000;
           const seen = [];
           const note = () => seen.push([s.bar.dataset.phase, s.text.textContent]);
           s.setCurrent('a');
           s.apply({event: 'snapshot', data: [{id: 'a', type: 'text', state: 'ready'}, {id: 'b', type: 'image', state: 'stopped'}]}); note();
           s.apply({event: 'state', data: {model: 'a', state: 'stopping', previous: 'ready', at: now, error: null}}); note();
           s.apply({event: 'state', data: {model: 'a', state: 'stopped', previous: 'stopping', at: now, error: null}});
           s.apply({event: 'state', data: {model: 'b', state: 'starting', previous: 'stopped', at: now - 5, error: null}});
           s.apply({event: 'swap', data: {from: 'a', to: 'b', at: now - 5}}); note();
           const clock = s.clock.textContent;
           s.apply({event: 'state', data: {model: 'b', state: 'ready', previous: 'starting', at: now, error: null}}); note();
           s.apply({event: 'state', data: {model: 'a', state: 'failed', previous: 'starting', at: now, error: 'exit 1'}}); note();
           s.apply({event: 'snapshot', data: [{id: 'a', type: 'text', state: 'ready'}, {id: 'b', type: 'image', state: 'ready'}, {id: 'c', type: 'text', state: 'stopped'}]}); note();
           s.apply({event: 'state', data: {model: 'c', state: 'starting', previous: 'stopped', at: now, error: null}});
           s.apply({event: 'swap', data: {from: null, to: 'c', at: now}}); note();
           clearInterval(s.timer);
           return {seen, clock};""",
    )
    assert got["seen"] == [
        ["idle", "a · ready · resident: a"],
        ["stopping", "stopping a"],
        ["swapping", "swapping a → b · loading b"],
        ["idle", "a · stopped (loads on first use) · resident: b"],
        ["idle", "a · failed: exit 1 · resident: a, b"],
        ["idle", "a · ready · resident: a, b"],  # two models fit the GPU together
        ["loading", "loading c"],  # a start that stops nothing is no swap
    ]
    assert got["clock"] in ("0:05", "0:06")


def test_the_models_table_says_what_the_warm_tier_knows(ui: Ui) -> None:
    got = run(
        ui,
        """return [
          m.warmText({warm_level: 2, host_memory_mib: 900, wake_seconds: 0.84, load_seconds: 41.2}),
          m.warmText({warm_level: 1, host_memory_mib: null, wake_seconds: null, load_seconds: 7}),
          m.warmText({warm_level: null, host_memory_mib: null}),
          m.warmText({}),
        ];""",
    )
    assert got == [
        "warm (sleep level 2, 900 MiB of host memory asleep, wakes in 0.8 s, cold start 41 s)",
        "warm (sleep level 1, cold start 7.0 s)",
        "",
        "",
    ], got


def test_time_helpers(ui: Ui) -> None:
    got = run(
        ui,
        """const now = Date.now();
           const near = (t) => Math.abs(t - now) < 2000;
           return {
             seconds: near(m.toLocalTime(now / 1000)),
             millis: near(m.toLocalTime(now)),
             iso: near(m.toLocalTime(new Date(now).toISOString())),
             numeric_string: near(m.toLocalTime(String(now / 1000))),
             garbage: near(m.toLocalTime('yesterday-ish')),
             skewed_is_now: near(m.toLocalTime(now / 1000 - 86400)),
             past: m.toLocalTime(now / 1000 - 30) <= now - 29000,
             elapsed: [m.formatElapsed(0), m.formatElapsed(61500), m.formatElapsed(3723000)],
           };""",
    )
    assert got == {
        "seconds": True,
        "millis": True,
        "iso": True,
        "numeric_string": True,
        "garbage": True,
        "skewed_is_now": True,
        "past": True,
        "elapsed": ["0:00", "1:01", "1:02:03"],
    }


def test_a_stored_picture_is_fetched_from_this_proxy_whatever_host_its_url_names(
    ui: Ui, stack: Stack
) -> None:
    """An images answer's URL may name another address for this proxy than the page's
    (HOMELAB_PUBLIC_URL, which `setup.sh server` sets): the page fetches the picture
    from its own origin (its connect-src 'self' would refuse the other), and a URL
    that is not the proxy's image store is fetched as it is."""
    name = "a" * 32 + ".png"
    got = run(
        ui,
        f"""const seen = [];
            const png = Uint8Array.from(atob('iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGNkZGJmYGBgYmBgYGBgAAAAcAAKM8X3iAAAAABJRU5ErkJggg=='), (c) => c.charCodeAt(0));
            const real = window.fetch;
            window.fetch = async (url) => {{
              seen.push(String(url));
              if (String(url).endsWith('v1/images/generations')) {{
                const data = [
                  {{url: 'http://elsewhere.invalid:9/images/{name}'}},
                  {{url: 'http://elsewhere.invalid:9/pictures/{name}'}},
                ];
                return new Response(JSON.stringify({{data}}), {{headers: {{'Content-Type': 'application/json'}}}});
              }}
              return new Response(png, {{headers: {{'Content-Type': 'image/png'}}}});
            }};
            try {{
              const api = m.createApi({{getKey: () => null}});
              const blobs = await api.generateImage({{model: 'img', prompt: 'x'}});
              return {{seen, pictures: blobs.length}};
            }} finally {{
              window.fetch = real;
            }}""",
    )
    proxy = stack.proxy_url.rstrip("/")
    assert got == {
        "seen": [
            f"{proxy}/v1/images/generations",
            f"{proxy}/images/{name}",
            f"http://elsewhere.invalid:9/pictures/{name}",
        ],
        "pictures": 2,
    }, got


def test_model_states_and_the_hosts_column_with_several_hosts(ui: Ui) -> None:
    got = run(
        ui,
        """const mk = () => document.createElement('span');
           const s = new m.ModelStates({bar: document.createElement('div'), text: mk(), clock: mk(), live: mk()});
           const seen = [];
           const note = () => seen.push(s.text.textContent);
           const both = {id: 'chat', type: 'text', state: 'ready', hosts: ['h1', 'h2']};
           const sleepy = {id: 'big', type: 'text', state: 'ready', hosts: ['h3']};
           s.setCurrent('big');
           s.apply({event: 'snapshot', data: [{...both, resident_on: ['h2'], away_on: ['h1']}, {...sleepy, away_on: ['h3']}]}); note();
           s.apply({event: 'snapshot', data: [{...both, resident_on: ['h2'], away_on: []}, {...sleepy, resident_on: ['h3'], away_on: []}]}); note();
           clearInterval(s.timer);
           const text = m.hostsText({...both, resident_on: ['h2'], loading_on: [], away_on: ['h1']});
           const text2 = m.hostsText({...both, resident_on: [], loading_on: ['h1'], away_on: []});
           return {seen, text, text2};""",
    )
    assert got["seen"] == [
        # every host of big is away: its last known state is no residence
        "big · ready · host h3 away (woken on first use if it sleeps) · resident: chat",
        "big · ready · resident: chat, big",
    ]
    assert got["text"] == "h1 (away) h2*" and got["text2"] == "h1~ h2"
