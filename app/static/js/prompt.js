// @ts-check
/**
 * The prompt line: a real <textarea> (so typing, IME, paste, selection and
 * screen readers all work) laid transparently over a mirror that draws the same
 * text with a blinking block cursor where the caret is. Keeps a history
 * navigated with Up/Down, like a shell.
 */

import { h } from "./dom.js";

/**
 * @typedef {object} PromptHandlers
 * @property {(text: string) => void} submit  Enter (or the send button) with the line's text
 * @property {() => void} stop    Esc / Ctrl+C / the stop button while busy
 * @property {() => void} clear   Ctrl+L
 */

export class Prompt {
  /**
   * @param {{form: HTMLFormElement, input: HTMLTextAreaElement, mirror: HTMLElement,
   *          label: HTMLElement, send: HTMLButtonElement, history: string[],
   *          onHistory: (lines: string[]) => void, handlers: PromptHandlers}} parts
   */
  constructor({ form, input, mirror, label, send, history, onHistory, handlers }) {
    this.form = form;
    this.input = input;
    this.mirror = mirror;
    this.label = label;
    this.send = send;
    this.handlers = handlers;
    /** Past lines, oldest first. */
    this.history = history;
    this.onHistory = onHistory;
    /** Index into history while browsing it; history.length = the draft line. */
    this.cursorAt = history.length;
    this.draft = "";
    this.masked = false;
    this.busy = false;

    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (this.busy) this.handlers.stop();
      else this.submit();
    });
    input.addEventListener("keydown", (e) => this.onKey(e));
    for (const type of ["input", "select", "selectionchange", "keyup", "click", "focus", "blur"]) {
      input.addEventListener(type, () => this.draw());
    }
    document.addEventListener("selectionchange", () => {
      if (document.activeElement === input) this.draw();
    });
    this.draw();
  }

  /** @param {string} text  the prompt string before the input, e.g. "llama3-8b>" */
  setLabel(text) {
    this.label.textContent = text;
  }

  /**
   * While busy the send button stops the answer instead.
   * @param {boolean} busy
   */
  setBusy(busy) {
    this.busy = busy;
    this.send.textContent = busy ? "[stop]" : "[send]";
    this.send.setAttribute("aria-label", busy ? "stop the answer" : "send");
    this.send.classList.toggle("stop", busy);
  }

  /**
   * Secret entry (the API key): drawn as asterisks, kept out of history.
   * @param {boolean} masked
   */
  setMasked(masked) {
    this.masked = masked;
    this.input.value = "";
    this.input.setAttribute("aria-label", masked ? "API key" : "Message, or a command (/help lists them)");
    this.draw();
  }

  focus() {
    this.input.focus({ preventScroll: true });
  }

  /** @param {string} text */
  setValue(text) {
    this.input.value = text;
    this.input.setSelectionRange(text.length, text.length);
    this.draw();
  }

  /** @private */
  submit() {
    const text = this.input.value;
    if (!this.masked && text.trim()) {
      if (this.history[this.history.length - 1] !== text) this.history.push(text);
      this.onHistory(this.history);
    }
    this.cursorAt = this.history.length;
    this.draft = "";
    this.setValue("");
    this.handlers.submit(text);
  }

  /**
   * @private
   * @param {KeyboardEvent} e
   */
  onKey(e) {
    if (e.isComposing) return;
    const input = this.input;
    if (e.key === "Enter" && !e.shiftKey && !e.altKey) {
      e.preventDefault();
      // While busy the handler says so and keeps the line; it is not lost.
      this.submit();
      return;
    }
    if (e.key === "Escape") {
      e.preventDefault();
      if (this.busy) this.handlers.stop();
      else this.setValue("");
      return;
    }
    if (e.ctrlKey && !e.metaKey && (e.key === "c" || e.key === "C") && input.selectionStart === input.selectionEnd) {
      e.preventDefault();
      if (this.busy) this.handlers.stop();
      else this.setValue("");
      return;
    }
    if (e.ctrlKey && (e.key === "l" || e.key === "L")) {
      e.preventDefault();
      this.handlers.clear();
      return;
    }
    if (this.masked || e.shiftKey || e.altKey || e.ctrlKey || e.metaKey) return;
    const before = input.value.slice(0, input.selectionStart);
    const after = input.value.slice(input.selectionEnd);
    if (e.key === "ArrowUp" && !before.includes("\n")) {
      e.preventDefault();
      this.browse(-1);
    } else if (e.key === "ArrowDown" && !after.includes("\n")) {
      e.preventDefault();
      this.browse(1);
    }
  }

  /**
   * Step through history; the line being typed is kept as the newest entry.
   * @private
   * @param {-1 | 1} step
   */
  browse(step) {
    const next = this.cursorAt + step;
    if (next < 0 || next > this.history.length) return;
    if (this.cursorAt === this.history.length) this.draft = this.input.value;
    this.cursorAt = next;
    this.setValue(next === this.history.length ? this.draft : this.history[next]);
  }

  /** Redraw the mirror: the text with the block cursor at the caret. */
  draw() {
    const input = this.input;
    const value = this.masked ? "*".repeat(input.value.length) : input.value;
    const start = input.selectionStart ?? value.length;
    const end = input.selectionEnd ?? value.length;
    const mirror = this.mirror;
    mirror.textContent = "";
    const focused = document.activeElement === input;
    if (start !== end) {
      // A selection is drawn by the textarea itself.
      mirror.append(value, "\u200b");
      return;
    }
    const under = value[start];
    const cursor = h("span", {
      class: `cursor${focused ? "" : " idle"}`,
      text: under === undefined || under === "\n" ? " " : under,
    });
    const skip = under === undefined || under === "\n" ? 0 : 1;
    mirror.append(value.slice(0, start), cursor, value.slice(start + skip), "\u200b");
  }
}
