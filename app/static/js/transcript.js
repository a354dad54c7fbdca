// @ts-check
/**
 * The transcript: the conversation as a list of entries (what the user sent,
 * answers, pictures, failed requests), kept in this browser so it survives a
 * reload, and drawn into the scrollback. The pictures themselves are in the
 * image store, by id; the chat context is built from these entries
 * (conversation.js).
 */

import { h } from "./dom.js";
import { loadTranscript, newId, saveTranscript } from "./store.js";

/** @typedef {import("./store.js").Entry} Entry */
/** @typedef {import("./store.js").ImageRef} ImageRef */
/** @typedef {import("./store.js").ImageStore} ImageStore */
/** @typedef {import("./images.js").ImageViewer} ImageViewer */
/** @typedef {import("./scrollback.js").Scrollback} Scrollback */

export class Transcript {
  /**
   * Starts with the entries this browser kept; `restore()` draws them.
   * `deleteStored(name)` deletes a picture from the proxy's image store (true: deleted;
   * false: the proxy no longer has it); pictures with a `stored` name get a [delete].
   * @param {{screen: Scrollback, viewer: ImageViewer, images: ImageStore,
   *          deleteStored?: (name: string) => Promise<boolean>}} parts
   */
  constructor({ screen, viewer, images, deleteStored }) {
    this.screen = screen;
    this.viewer = viewer;
    this.images = images;
    this.deleteStored = deleteStored;
    /** Oldest first. Read it; change it only through `record` and `clear`. @type {Entry[]} */
    this.entries = loadTranscript();
  }

  /**
   * Draw the kept entries and say how many there were; delete stored pictures
   * that no kept entry refers to any more (their lines fell off the end).
   */
  restore() {
    void this.images.prune(this.imageIds());
    if (!this.entries.length) return;
    for (const entry of this.entries) this.render(entry);
    const n = this.entries.length;
    this.screen.print(`── restored ${n} line${n === 1 ? "" : "s"} from this browser (/clear starts over) ──`, "dim");
    this.screen.toEnd();
  }

  /**
   * Add an entry and save the transcript (it does not draw it: see `render`).
   * @param {Entry} entry
   */
  record(entry) {
    this.entries.push(entry);
    saveTranscript(this.entries);
  }

  /**
   * Store a picture for an entry to refer to.
   * @param {Blob} blob
   * @param {string} name
   * @param {string} [stored]  its name in the proxy's image store, if it has it
   * @returns {Promise<ImageRef>}
   */
  async keepImage(blob, name, stored) {
    /** @type {ImageRef} */
    const ref = { id: newId(), name };
    if (stored) ref.stored = stored;
    await this.images.put(ref.id, blob);
    return ref;
  }

  /**
   * [delete]: the picture goes from the proxy (its URL answers 404 from then on) and
   * from this browser; the entry keeps a line that says so.
   * @private
   * @param {ImageRef} ref
   * @param {HTMLElement} slot
   */
  async deletePicture(ref, slot) {
    if (!ref.stored || !this.deleteStored) return;
    await this.deleteStored(ref.stored); // false: the proxy had it no more; gone either way
    ref.deleted = true;
    saveTranscript(this.entries);
    void this.images.prune(this.imageIds());
    slot.replaceChildren(deletedLine(ref));
  }

  /**
   * Draw one entry at the end of the scrollback. Pictures appear once read back
   * from the image store; one that is gone says so.
   * @param {Entry} entry
   */
  render(entry) {
    switch (entry.t) {
      case "user": {
        const line = this.screen.user(entry.model, entry.mode === "image" ? `/image ${entry.text}` : entry.text, entry.image?.name);
        if (entry.image) this.thumb(line, entry.image.id, entry.image.name);
        return;
      }
      case "assistant":
        this.screen.answer(entry.text, entry.model, { stopped: entry.stopped, truncated: entry.truncated });
        return;
      case "error":
        this.screen.print(`ERR ${entry.text}`, "error");
        return;
      case "image": {
        const holder = this.screen.add(h("div", { class: "entry images", "data-model": entry.model }));
        entry.images.forEach((ref, i) => {
          const slot = holder.appendChild(h("div", { class: "image-slot" }));
          if (ref.deleted) {
            slot.appendChild(deletedLine(ref));
            return;
          }
          void this.images.get(ref.id).then((blob) => {
            if (!blob) {
              slot.appendChild(h("div", { class: "line dim", text: `[image ${ref.name}: no longer stored in this browser]` }));
              return;
            }
            slot.appendChild(
              this.viewer.card({
                blob,
                caption: `${entry.model}${entry.edit ? " edit" : ""}${entry.images.length > 1 ? ` ${i + 1}/${entry.images.length}` : ""}${entry.seconds ? ` · ${entry.seconds}s` : ""}`,
                filename: `${entry.model}-${entry.id}-${i + 1}`,
                alt: `${entry.edit ? "edited" : "generated"} by ${entry.model}: ${entry.prompt}`,
                onDelete: ref.stored && this.deleteStored ? () => this.deletePicture(ref, slot) : undefined,
              }),
            );
            this.screen.follow();
          });
        });
      }
    }
  }

  /**
   * A small preview of an attached image after the user's line.
   * @private
   * @param {HTMLElement} line
   * @param {string} id
   * @param {string} name
   */
  thumb(line, id, name) {
    void this.images.get(id).then((blob) => {
      if (!blob) return;
      line.appendChild(this.viewer.card({ blob, caption: "attached", filename: name.replace(/\.[^.]+$/, ""), alt: `attached: ${name}` })).classList.add("thumb");
    });
  }

  /**
   * Ids of every picture the transcript refers to.
   * @private
   * @returns {Set<string>}
   */
  imageIds() {
    const ids = new Set();
    for (const e of this.entries) {
      if (e.t === "user" && e.image) ids.add(e.image.id);
      if (e.t === "image") for (const ref of e.images) if (!ref.deleted) ids.add(ref.id);
    }
    return ids;
  }

  /** Start a new conversation: forget every entry and picture, clear the screen. */
  async clear() {
    this.entries = [];
    saveTranscript(this.entries);
    this.viewer.releaseAll();
    this.screen.clear();
    this.screen.print("── new conversation ──", "dim");
    await this.images.prune(new Set());
  }
}

/**
 * The line a deleted picture leaves.
 * @param {ImageRef} ref
 */
function deletedLine(ref) {
  return h("div", { class: "line dim", text: `[image ${ref.name}: deleted]` });
}
