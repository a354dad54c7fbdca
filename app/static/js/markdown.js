// @ts-check
/**
 * Just enough Markdown for a terminal: fenced code blocks (``` or ~~~, with a
 * language tag), `inline code` and **bold**. Everything else stays as typed,
 * which is what a terminal shows anyway. Output is DOM built from text nodes:
 * a model's answer can never inject markup.
 */

import { h } from "./dom.js";

/**
 * @typedef {{kind: "text", text: string} |
 *           {kind: "code", lang: string, text: string, closed: boolean}} Block
 */

/**
 * Split a message into text and fenced code blocks. An unclosed fence (an answer
 * still streaming) runs to the end and is marked closed: false.
 * @param {string} source
 * @returns {Block[]}
 */
export function splitBlocks(source) {
  /** @type {Block[]} */
  const blocks = [];
  const lines = source.split("\n");
  /** @type {string[]} */
  let text = [];
  /** @type {{fence: string, lang: string, lines: string[]} | null} */
  let code = null;
  for (const line of lines) {
    if (code) {
      const close = /^\s{0,3}(`{3,}|~{3,})\s*$/.exec(line);
      if (close && close[1][0] === code.fence[0] && close[1].length >= code.fence.length) {
        blocks.push({ kind: "code", lang: code.lang, text: code.lines.join("\n"), closed: true });
        code = null;
      } else {
        code.lines.push(line);
      }
      continue;
    }
    const open = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/.exec(line);
    if (open) {
      if (text.length) blocks.push({ kind: "text", text: text.join("\n") });
      text = [];
      code = { fence: open[1], lang: open[2] ?? "", lines: [] };
      continue;
    }
    text.push(line);
  }
  if (code) blocks.push({ kind: "code", lang: code.lang, text: code.lines.join("\n"), closed: false });
  else if (text.length) blocks.push({ kind: "text", text: text.join("\n") });
  return blocks.filter((b) => b.kind === "code" || b.text.length);
}

/**
 * Render a message as DOM.
 * @param {string} source
 * @returns {DocumentFragment}
 */
export function renderMarkdown(source) {
  const frag = document.createDocumentFragment();
  for (const block of splitBlocks(source)) {
    frag.appendChild(block.kind === "code" ? codeBlock(block.text, block.lang) : inline(trimBlankEdges(block.text)));
  }
  return frag;
}

/**
 * Blank lines around a fence would double the block's own margin.
 * @param {string} text
 */
function trimBlankEdges(text) {
  return text.replace(/^\n+/, "").replace(/\n+$/, "");
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
  const pattern = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*\n]+)\*\*/g;
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    const at = m.index ?? 0;
    if (at > last) p.appendChild(document.createTextNode(text.slice(last, at)));
    if (m[1]) p.appendChild(h("code", { class: "inline", text: m[2] }));
    else p.appendChild(h("strong", { text: m[3] }));
    last = at + m[0].length;
  }
  if (last < text.length) p.appendChild(document.createTextNode(text.slice(last)));
  return p;
}
