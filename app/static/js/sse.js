// @ts-check
/**
 * An incremental parser for text/event-stream, as the HTML standard defines it
 * (https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream).
 * Pure: it never touches the network; api.js feeds it decoded chunks.
 */

/** @typedef {{event: string, data: string, id: string}} SseEvent */

export class SseParser {
  constructor() {
    /** @private */ this.buffer = "";
    /** @private */ this.event = "";
    /** @private @type {string[]} */ this.data = [];
    /** @private */ this.id = "";
  }

  /**
   * Feed the next decoded chunk; returns the events it completed, in order.
   * Chunks may split lines anywhere, including between "\r" and "\n".
   * @param {string} chunk
   * @returns {SseEvent[]}
   */
  feed(chunk) {
    this.buffer += chunk;
    /** @type {SseEvent[]} */
    const out = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) break;
      // A lone "\r" at the very end may be the first half of "\r\n": wait for more.
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event) out.push(event);
    }
    return out;
  }

  /**
   * Flush at end of stream: a final event without its blank line is dispatched
   * (lenient: some servers close right after the last data line).
   * @returns {SseEvent[]}
   */
  end() {
    const out = this.buffer ? this.feed("\n") : [];
    const last = this.line("");
    if (last) out.push(last);
    return out;
  }

  /**
   * @private
   * @param {string} line
   * @returns {SseEvent | null}
   */
  line(line) {
    if (line === "") {
      if (!this.data.length) {
        this.event = "";
        return null;
      }
      const event = { event: this.event || "message", data: this.data.join("\n"), id: this.id };
      this.event = "";
      this.data = [];
      return event;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
    return null;
  }
}
