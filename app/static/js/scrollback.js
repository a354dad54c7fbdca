// @ts-check
/**
 * The scrollback: lines the terminal prints. It only renders; it keeps no
 * conversation state (transcript.js does) and never touches the network.
 */

import { clear, formatElapsed, h } from "./dom.js";
import { renderBlock, renderMarkdown, scanBlocks } from "./markdown.js";

/** @typedef {"info" | "ok" | "warn" | "error" | "dim"} Tone */

export class Scrollback {
  /** @param {HTMLElement} root  the role="log" element */
  constructor(root) {
    this.root = root;
    /**
     * Follow new output. Cleared when the user scrolls up, set again when they
     * scroll back to the end; content growing (an image decoding) keeps it.
     */
    this.pinned = true;
    let lastTop = root.scrollTop;
    root.addEventListener(
      "scroll",
      () => {
        // Output only ever moves the view down; moving up is the user reading back.
        if (this.atEnd()) this.pinned = true;
        else if (root.scrollTop < lastTop) this.pinned = false;
        lastTop = root.scrollTop;
      },
      { passive: true },
    );
    // load does not bubble: listen in the capture phase for images anywhere below.
    root.addEventListener("load", () => this.follow(), true);
    addEventListener("resize", () => this.follow());
  }

  /** True when the view is at (or near) the end. */
  atEnd() {
    const r = this.root;
    return r.scrollHeight - r.scrollTop - r.clientHeight < 48;
  }

  /**
   * Add a node, keeping the view at the end if it follows output.
   * @template {Node} T
   * @param {T} node
   * @returns {T}
   */
  add(node) {
    this.root.appendChild(node);
    this.follow();
    return node;
  }

  /** Scroll to the end if the view follows output (call after content grew). */
  follow() {
    if (this.pinned) this.toEnd();
  }

  toEnd() {
    this.root.scrollTop = this.root.scrollHeight;
    this.pinned = true;
  }

  /** Clear the screen. */
  clear() {
    clear(this.root);
  }

  /**
   * Print a message line.
   * @param {string} text
   * @param {Tone} [tone]
   * @returns {HTMLElement}
   */
  print(text, tone = "info") {
    return this.add(h("div", { class: `line ${tone}`, text }));
  }

  /**
   * Print an error the way a terminal does: a tag, who said it, then the message.
   * @param {string} message
   * @param {{source?: string | null, status?: number}} [from]
   */
  error(message, from = {}) {
    const who = [from.source, from.status ? String(from.status) : ""].filter(Boolean).join(" ");
    return this.add(
      h(
        "div",
        { class: "line error", role: "alert" },
        h("span", { class: "tag", text: "ERR" }),
        who ? h("span", { class: "who", text: `[${who}]` }) : null,
        " ",
        message,
      ),
    );
  }

  /**
   * Echo what the user sent, after a prompt naming the model.
   * @param {string} model
   * @param {string} text
   * @param {string} [attachment]  the name of an attached image
   */
  user(model, text, attachment) {
    return this.add(
      h(
        "div",
        { class: "entry user" },
        h("span", { class: "ps", text: `${model}>` }),
        " ",
        h("span", { class: "user-text", text }),
        attachment ? h("span", { class: "attached", text: ` [+img ${attachment}]` }) : null,
      ),
    );
  }

  /**
   * A model's answer, rendered from Markdown. For one still being written use `stream()`.
   * @param {string} text
   * @param {string} model
   * @param {{stopped?: boolean, truncated?: boolean}} [how]
   */
  answer(text, model, how = {}) {
    const body = h("div", { class: "answer-body" });
    body.appendChild(renderMarkdown(text));
    const node = h("div", { class: "entry answer", "data-model": model }, body);
    endNote(node, how);
    return this.add(node);
  }

  /**
   * Start an answer that arrives piece by piece.
   * @param {string} model
   * @returns {StreamingAnswer}
   */
  stream(model) {
    const node = h("div", { class: "entry answer streaming", "data-model": model, "aria-busy": "true" });
    this.add(node);
    return new StreamingAnswer(this, node);
  }

  /**
   * A block for work in progress ("waiting for sdxl  0:04"); update or remove it later.
   * @param {string} text
   * @returns {Pending}
   */
  pending(text) {
    const label = h("span", { class: "pending-text", text });
    const clock = h("span", { class: "pending-clock" });
    const node = this.add(h("div", { class: "line pending", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), " ", label, " ", clock));
    return new Pending(node, label, clock);
  }
}

/** A line that shows what is being waited for, with a ticking clock. */
export class Pending {
  /**
   * @param {HTMLElement} node
   * @param {HTMLElement} label
   * @param {HTMLElement} clock
   */
  constructor(node, label, clock) {
    this.node = node;
    this.label = label;
    this.clock = clock;
    this.started = performance.now();
    this.timer = setInterval(() => this.tick(), 250);
    this.tick();
  }

  tick() {
    this.clock.textContent = formatElapsed(performance.now() - this.started);
  }

  /** @param {string} text */
  set(text) {
    if (this.label.textContent !== text) this.label.textContent = text;
  }

  /** Milliseconds since it was shown. */
  elapsed() {
    return performance.now() - this.started;
  }

  done() {
    clearInterval(this.timer);
    this.node.remove();
  }
}

/**
 * An answer being written. It is drawn at most once per animation frame, however
 * many pieces arrive, and incrementally: a block (a paragraph run or a code block)
 * is final once the next one has begun, so it is drawn once and kept; each frame
 * parses and redraws only the last block.
 */
export class StreamingAnswer {
  /**
   * @param {Scrollback} screen
   * @param {HTMLElement} node
   */
  constructor(screen, node) {
    this.screen = screen;
    this.node = node;
    this.text = "";
    /** How many times it was drawn (the tests and the benchmark read it). */
    this.renders = 0;
    /** How many characters of the answer those draws parsed, in all. */
    this.parsed = 0;
    /** @private */ this.scheduled = 0;
    /** @private where the blocks that are not final yet start in `text` */ this.from = 0;
    /** @private @type {HTMLElement[]} the DOM of the blocks not final yet, redrawn each frame */ this.tail = [];
    /** @private */ this.body = h("div", { class: "answer-body" });
    /** @private */ this.cursor = h("span", { class: "cursor", "aria-hidden": "true" });
    node.append(this.body);
    this.render();
  }

  /** @param {string} piece */
  append(piece) {
    this.text += piece;
    if (!this.scheduled) this.scheduled = requestAnimationFrame(() => this.render());
  }

  /** @private */
  render() {
    this.scheduled = 0;
    this.renders++;
    const source = this.text.slice(this.from);
    this.parsed += source.length;
    const blocks = scanBlocks(source);
    // Blocks before the last are final, but for one case: a fence opened on the last,
    // unfinished line ("```py" may yet become "```py`", which is text) has not ended
    // the block before it yet.
    let open = blocks.length - 1;
    const last = blocks[open];
    if (last?.kind === "code" && !source.includes("\n", last.from) && open > 0) open--;
    this.cursor.remove();
    for (const node of this.tail) node.remove();
    for (const block of blocks.slice(0, open)) {
      const done = renderBlock(block);
      if (done) this.body.appendChild(done);
    }
    if (open > 0) this.from += blocks[open].from;
    this.tail = [];
    for (const block of blocks.slice(open)) {
      const node = renderBlock(block);
      if (node) this.tail.push(this.body.appendChild(node));
    }
    // The block cursor follows the last character written.
    const end = this.body.lastElementChild;
    const target = end?.matches("figure.code") ? end.querySelector("code") : end;
    (target ?? this.body).appendChild(this.cursor);
    this.screen.follow();
  }

  /**
   * Stop updating: render the final text, drop the cursor.
   * @param {{stopped?: boolean, truncated?: boolean}} [how]
   */
  finish(how = {}) {
    if (this.scheduled) cancelAnimationFrame(this.scheduled);
    this.render();
    this.cursor.remove();
    this.node.classList.remove("streaming");
    this.node.removeAttribute("aria-busy");
    endNote(this.node, how);
  }
}

/**
 * Say why an answer ended early: stopped by the user, or cut at max_tokens.
 * @param {HTMLElement} node
 * @param {{stopped?: boolean, truncated?: boolean}} how
 */
function endNote(node, how) {
  if (how.stopped) node.appendChild(h("div", { class: "line dim stopped", text: "^C stopped" }));
  else if (how.truncated) node.appendChild(h("div", { class: "line dim truncated", text: "… cut off at max_tokens (/set max_tokens N)" }));
}
