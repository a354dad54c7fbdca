// @ts-check
/**
 * Just enough Markdown for a terminal: fenced code blocks (``` or ~~~, with a
 * language tag), `inline code` and **bold**. Everything else stays as typed,
 * which is what a terminal shows anyway. Output is DOM built from text nodes:
 * a model's answer can never inject markup. Parsing is linear in the length of
 * the answer, whatever it contains (the regular expressions used before took
 * seconds on 116 KB full of backticks), and blocks can be drawn one at a time
 * (`scanBlocks` + `renderBlock`), which a streaming answer does.
 */

import { h } from "./dom.js";

/**
 * @typedef {{kind: "text", text: string} |
 *           {kind: "code", lang: string, text: string, closed: boolean}} Block
 */

/**
 * A block with where its source starts: `from` is the offset of its first line
 * (for a code block, its opening fence) in the string that was scanned.
 * @typedef {Block & {from: number}} PlacedBlock
 */

/** An opening fence: indent, ``` or ~~~, and an info string without backticks. */
const OPEN_FENCE = /^\s{0,3}(`{3,}|~{3,})([^`]*)$/;
/** A closing fence: indent, ``` or ~~~, and nothing else. */
const CLOSE_FENCE = /^\s{0,3}(`{3,}|~{3,})\s*$/;
/** The language tag at the start of a fence's info string. */
const LANG = /^\s*([\w+#.-]*)/;

/**
 * Split a message into text and fenced code blocks, each with the offset its
 * source starts at, empty text blocks included. Linear in the length of `source`
 * (the fence patterns are anchored and cannot backtrack over a line more than once).
 * @param {string} source
 * @returns {PlacedBlock[]}
 */
export function scanBlocks(source) {
  /** @type {PlacedBlock[]} */
  const blocks = [];
  /** @type {string[]} */
  let text = [];
  let textFrom = 0;
  /** @type {{fence: string, lang: string, lines: string[], from: number} | null} */
  let code = null;
  let at = 0;
  for (const line of source.split("\n")) {
    const from = at;
    at += line.length + 1;
    if (code) {
      const close = CLOSE_FENCE.exec(line);
      if (close && close[1][0] === code.fence[0] && close[1].length >= code.fence.length) {
        blocks.push({ kind: "code", lang: code.lang, text: code.lines.join("\n"), closed: true, from: code.from });
        code = null;
        textFrom = at;
      } else {
        code.lines.push(line);
      }
      continue;
    }
    const open = OPEN_FENCE.exec(line);
    if (open) {
      if (text.length) blocks.push({ kind: "text", text: text.join("\n"), from: textFrom });
      text = [];
      code = { fence: open[1], lang: LANG.exec(open[2])?.[1] ?? "", lines: [], from };
      continue;
    }
    text.push(line);
  }
  if (code) blocks.push({ kind: "code", lang: code.lang, text: code.lines.join("\n"), closed: false, from: code.from });
  else if (text.length) blocks.push({ kind: "text", text: text.join("\n"), from: textFrom });
  return blocks;
}

/**
 * Split a message into text and fenced code blocks. An unclosed fence (an answer
 * still streaming) runs to the end and is marked closed: false.
 * @param {string} source
 * @returns {Block[]}
 */
export function splitBlocks(source) {
  return scanBlocks(source)
    .filter((b) => b.kind === "code" || b.text.length)
    .map(({ from: _, ...block }) => block);
}

/**
 * Render a message as DOM.
 * @param {string} source
 * @returns {DocumentFragment}
 */
export function renderMarkdown(source) {
  const frag = document.createDocumentFragment();
  for (const block of splitBlocks(source)) {
    const node = renderBlock(block);
    if (node) frag.appendChild(node);
  }
  return frag;
}

/**
 * One block as DOM; nothing for an empty text block.
 * @param {Block} block
 * @returns {HTMLElement | null}
 */
export function renderBlock(block) {
  if (block.kind === "code") return codeBlock(block.text, block.lang);
  return block.text.length ? inline(trimBlankEdges(block.text)) : null;
}

/**
 * Blank lines around a fence would double the block's own margin.
 * (A loop, not /\n+$/: that pattern is quadratic on a long run of newlines.)
 * @param {string} text
 */
function trimBlankEdges(text) {
  let start = 0;
  let end = text.length;
  while (start < end && text[start] === "\n") start++;
  while (end > start && text[end - 1] === "\n") end--;
  return text.slice(start, end);
}

/**
 * @param {string} text
 * @param {string} lang
 */
function codeBlock(text, lang) {
  const code = h("code", { text });
  const copy = h("button", {
    type: "button",
    class: "btn code-copy",
    "aria-label": `copy ${lang || "code"} block`,
    text: "[copy]",
    onclick: () => copyText(text, copy),
  });
  return h(
    "figure",
    { class: "code" },
    h("figcaption", {}, h("span", { class: "code-lang", text: lang || "code" }), copy),
    h("pre", { tabindex: 0 }, code),
  );
}

/**
 * Copy to the clipboard; outside a secure context (plain http on a LAN address)
 * navigator.clipboard is missing, so fall back to a hidden textarea.
 * @param {string} text
 * @param {HTMLButtonElement} button
 */
async function copyText(text, button) {
  let ok = false;
  try {
    if (navigator.clipboard) {
      await navigator.clipboard.writeText(text);
      ok = true;
    }
  } catch {
    ok = false;
  }
  if (!ok) {
    const area = h("textarea", { class: "sr-only", "aria-hidden": "true" });
    area.value = text;
    document.body.appendChild(area);
    area.select();
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    area.remove();
  }
  button.textContent = ok ? "[copied]" : "[copy failed]";
  setTimeout(() => (button.textContent = "[copy]"), 1500);
}

/**
 * `code` and **bold** spans inside a paragraph.
 * @param {string} text
 * @returns {HTMLElement}
 */
function inline(text) {
  const p = h("div", { class: "md-text" });
  let last = 0;
  for (const span of inlineSpans(text)) {
    if (span.at > last) p.appendChild(document.createTextNode(text.slice(last, span.at)));
    p.appendChild(span.kind === "code" ? h("code", { class: "inline", text: span.text }) : h("strong", { text: span.text }));
    last = span.end;
  }
  if (last < text.length) p.appendChild(document.createTextNode(text.slice(last)));
  return p;
}

/**
 * @typedef {{kind: "code" | "bold", at: number, end: number, text: string}} Span
 * A span's source is `text.slice(at, end)`, delimiters included; `text` is its content.
 */

/**
 * The `code` and **bold** spans of a paragraph, left to right, in time linear in
 * its length. They are the matches that this regular expression would find,
 *
 *     /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*\n]+)\*\*\/g
 *
 * which the renderer used until it took seconds on a long answer full of
 * backticks (its backtracking is quadratic). The same rules, spelled out: a
 * code span opens at the first position from which the rest of a backtick run
 * (r backticks) is followed, later, by a run of exactly r backticks; its content
 * runs to the first such run. A bold span is "**", then no "*" or newline, then "**".
 * @param {string} text
 * @returns {Span[]}
 */
export function inlineSpans(text) {
  const n = text.length;
  // Every backtick run: its start, its length, and for each length the starts of the runs
  // that long. indexOf jumps over the text between them (a plain paragraph costs little).
  /** @type {number[]} */
  const runStart = [];
  /** @type {number[]} */
  const runLength = [];
  /** @type {Map<number, number[]>} */
  const runsOf = new Map();
  for (let i = text.indexOf("`"); i >= 0; ) {
    let j = i + 1;
    while (text[j] === "`") j++;
    runStart.push(i);
    runLength.push(j - i);
    const starts = runsOf.get(j - i);
    if (starts) starts.push(i);
    else runsOf.set(j - i, [i]);
    i = text.indexOf("`", j);
  }
  /** For each length, how many of its runs have been passed: each only moves forward. */
  /** @type {Map<number, number>} */
  const passed = new Map();
  /**
   * @param {number} length
   * @param {number} after
   * @returns {number} the start of the first run of exactly `length` at or after `after`, or -1
   */
  const runAfter = (length, after) => {
    const starts = runsOf.get(length);
    if (!starts) return -1;
    let k = passed.get(length) ?? 0;
    while (k < starts.length && starts[k] < after) k++;
    passed.set(length, k);
    return k < starts.length ? starts[k] : -1;
  };
  // The next "**" and the next newline at or after a position; both only move forward.
  let bold = -1;
  let newline = -1;
  /** @param {number} from */
  const nextBold = (from) => {
    if (bold !== n && bold < from) bold = text.indexOf("**", from);
    if (bold < 0) bold = n;
    return bold;
  };
  /** @param {number} from */
  const nextNewline = (from) => {
    if (newline !== n && newline < from) newline = text.indexOf("\n", from);
    if (newline < 0) newline = n;
    return newline;
  };

  /** @type {Span[]} */
  const spans = [];
  let r = 0;
  for (let i = 0; i < n; ) {
    while (r < runStart.length && runStart[r] < i) r++;
    const tick = r < runStart.length ? runStart[r] : n;
    const star = nextBold(i);
    if (tick === n && star === n) break;
    if (tick < star) {
      // The opener is the rest of the run from tick + k: the longest one that closes wins.
      const run = runLength[r];
      i = tick + run;
      for (let k = 0; k < run; k++) {
        const close = runAfter(run - k, tick + run + 1);
        if (close < 0) continue;
        spans.push({ kind: "code", at: tick + k, end: close + run - k, text: text.slice(tick + run, close) });
        i = close + run - k;
        break;
      }
      continue;
    }
    // "**", then neither "*" nor a newline, then "**".
    let end = text.indexOf("*", star + 2);
    if (end < 0) end = n;
    if (end > star + 2 && nextNewline(star + 2) > end && text[end + 1] === "*") {
      spans.push({ kind: "bold", at: star, end: end + 2, text: text.slice(star + 2, end) });
      i = end + 2;
    } else {
      i = star + 1;
    }
  }
  return spans;
}
