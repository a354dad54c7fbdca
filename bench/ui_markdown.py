"""How long the web UI takes to render a long answer, in Debian's Chromium.

    python -m bench.ui_markdown [--old REV] [--repeat N]

Renders a 116 KB answer built to be hard for a Markdown parser (backtick runs
that never close (one of 30000), fence-like lines, long runs of newlines, unclosed bold,
many code blocks) and a plain 116 KB answer of words, with `renderMarkdown` from
app/static/js/markdown.js; then streams the hard one into a `StreamingAnswer` in
1 KB pieces, three per animation frame, and reports its draws, the characters they
parsed and the longest frame. `--old REV` also times the renderer as it was at git
revision REV (e.g. the commit before the linear-time parser), in the same page.
Results go to bench/results/ui_markdown.json. Needs playwright and Chromium
(`/usr/bin/chromium`, or HOMELAB_CHROMIUM); serves app/static on a free port in
18600-18699.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from bench.common import REPO, table, write_json

CHROMIUM = os.environ.get("HOMELAB_CHROMIUM", "/usr/bin/chromium")

HARD_ANSWER = """
  // About 116 KB of what the old regular expressions took seconds on: backtick runs
  // that never close, fence-like lines with a backtick in their info string, long runs
  // of newlines, unclosed bold; between them real code blocks, spans and bold, so the
  // answer has many blocks, as a long answer does. Per unit: 2 code blocks, 2 code
  // spans (`ok`, and the fence-like line's `ccc...`: "``" stays text), 1 bold.
  // Last, a run of 30000 backticks: the old span pattern took seconds on it alone.
  const big = 'x' + '`'.repeat(30000) + '\\n';
  const parts = [];
  for (let i = 0; big.length + parts.join('').length < 116 * 1024; i++) {
    parts.push('x' + '`'.repeat(4 + (i % 40)) + 'a\\n' + '**b\\n'.repeat(20));
    parts.push('```js\\nlet n = ' + i + '; // `not a span` **nor bold**\\n```\\n');
    parts.push('```' + 'c'.repeat(300) + '`\\n' + '\\n'.repeat(200) + 'after `ok` and **yes**\\n');
    parts.push('~~~\\nplain\\n~~~\\n');
  }
  const answer = parts.join('') + big;
"""
"""JavaScript statements that define `answer` (and `parts`, four per unit); the browser
tests (tests/e2e/browser/test_ui_modules.py) render the same answer."""

MEASURE = (
    """async ([repeat, old]) => {
  const md = await import('/js/markdown.js');
  const sb = await import('/js/scrollback.js');
  const before = old ? await import('/js/markdown_old.js') : null;
"""
    + HARD_ANSWER
    + """
  const hard = answer;
  const plain = Array.from({length: hard.length / 6}, (_, i) => 'word' + (i % 10) + ' ').join('');
  const time = (render, text) => {
    render(text);  // warm-up: compiled code, not the first call's compiling
    const ms = [];
    for (let i = 0; i < repeat; i++) {
      const t = performance.now();
      document.createElement('div').appendChild(render(text));
      ms.push(performance.now() - t);
    }
    return ms.sort((a, b) => a - b)[Math.floor(ms.length / 2)];
  };
  const out = {size: hard.length, hard_ms: time(md.renderMarkdown, hard), plain_ms: time(md.renderMarkdown, plain)};
  if (before) {
    out.old_hard_ms = time(before.renderMarkdown, hard);
    out.old_plain_ms = time(before.renderMarkdown, plain);
  }
  const root = document.createElement('div');
  document.body.appendChild(root);
  const stream = new sb.Scrollback(root).stream('x');
  let frames = 0, longest = 0, last = performance.now(), streaming = true;
  const tick = (now) => {
    frames++; longest = Math.max(longest, now - last); last = now;
    if (streaming) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  const started = performance.now();
  for (let i = 0, n = 0; i < hard.length; i += 1024) {
    stream.append(hard.slice(i, i + 1024));
    if (++n % 3 === 0) await new Promise(r => requestAnimationFrame(r));
  }
  stream.finish();
  streaming = false;
  Object.assign(out, {stream_ms: performance.now() - started, stream_renders: stream.renders,
    stream_parsed: stream.parsed, stream_frames: frames, stream_longest_frame_ms: longest});
  return out;
}"""
)


def free_port() -> int:
    for port in range(18600, 18700):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18600-18699")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on loopback (module scripts need http, not file:)."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="also time markdown.js as it was at this git revision")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="timed renders of each answer, after one warm-up (median)",
    )
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        static = Path(tmp) / "static"
        shutil.copytree(REPO / "app" / "static", static)
        if args.old:
            old = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{args.old}:app/static/js/markdown.js"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (static / "js" / "markdown_old.js").write_text(old, encoding="utf-8")
        with serve(static) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                page.goto(url)
                result = page.evaluate(MEASURE, [args.repeat, bool(args.old)])
            finally:
                browser.close()
    result["old_revision"] = args.old
    write_json("ui_markdown", result)
    rows = [
        ["116 KB hard answer, one render", f"{result['hard_ms']:.1f}", _old(result, "old_hard_ms")],
        ["116 KB of words, one render", f"{result['plain_ms']:.1f}", _old(result, "old_plain_ms")],
    ]
    print(table(["ms (median)", "now", f"at {args.old}" if args.old else "old"], rows))
    print(
        f"streamed in 1 KB pieces: {result['stream_renders']} draws in {result['stream_frames']}"
        f" frames, {result['stream_parsed']} characters parsed for {result['size']},"
        f" longest frame {result['stream_longest_frame_ms']:.0f} ms,"
        f" {result['stream_ms']:.0f} ms in all"
    )
    return 0


def _old(result: dict, key: str) -> str:
    return f"{result[key]:.1f}" if key in result else "not run"


if __name__ == "__main__":
    raise SystemExit(main())
