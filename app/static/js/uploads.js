// @ts-check
/**
 * Uploads: the one image the user attached to their next line, from the
 * `[+img]` button (or `/attach`), a file dropped on the page, or an image pasted
 * into the prompt. Files are checked (type, size, that they decode) before they
 * are taken; the chip above the prompt shows what is attached. The next request
 * takes the attachment (`take()`), so it goes with one line only.
 */

import { clear, h } from "./dom.js";
import { newId } from "./store.js";

/** Uploads larger than this are refused before they leave the browser. */
export const MAX_UPLOAD_BYTES = 20 * 1024 * 1024;

const ACCEPTED = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"];

/**
 * @typedef {{blob: Blob, name: string, width: number, height: number}} Upload
 */

/**
 * Check and decode an uploaded file.
 * @param {File | Blob} file
 * @param {string} [name]
 * @returns {Promise<Upload>}
 * @throws {Error} with a message fit for the terminal when it is not a usable image.
 */
export async function readUpload(file, name = file instanceof File ? file.name : "pasted.png") {
  if (!ACCEPTED.includes(file.type)) {
    throw new Error(`${name}: not an image this UI can send (${file.type || "unknown type"}); use PNG, JPEG, WebP, GIF or BMP`);
  }
  if (file.size > MAX_UPLOAD_BYTES) {
    throw new Error(`${name}: ${(file.size / 1048576).toFixed(1)} MB is over the ${MAX_UPLOAD_BYTES / 1048576} MB upload limit`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new Error(`${name}: the file could not be decoded as an image`);
  }
  const { width, height } = bitmap;
  bitmap.close();
  return { blob: file, name: name || "image.png", width, height };
}

export class Uploads {
  /**
   * Wires the file input, the page's drag-and-drop and the prompt's paste.
   * @param {object} parts
   * @param {HTMLInputElement} parts.input  the hidden file picker
   * @param {HTMLElement} parts.drop  the "drop the image" overlay
   * @param {HTMLElement} parts.chip  shows the attachment, with an [x] to drop it
   * @param {HTMLElement} parts.paste  where a pasted image is taken from (the prompt)
   * @param {(upload: Upload) => void} parts.onAttach  a file was checked and attached
   * @param {(message: string) => void} parts.onRefuse  a file was not usable: why
   */
  constructor({ input, drop, chip, paste, onAttach, onRefuse }) {
    this.input = input;
    this.chip = chip;
    /** @private */ this.onAttach = onAttach;
    /** @private */ this.onRefuse = onRefuse;
    /** @private @type {Upload | null} */
    this.current = null;

    input.addEventListener("change", () => {
      const file = input.files?.[0];
      input.value = "";
      if (file) void this.attach(file);
    });
    let depth = 0;
    const hasFiles = (/** @type {DragEvent} */ e) => Array.from(e.dataTransfer?.types ?? []).includes("Files");
    document.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      depth++;
      drop.hidden = false;
    });
    document.addEventListener("dragleave", (e) => {
      if (!hasFiles(e)) return;
      depth = Math.max(0, depth - 1);
      if (!depth) drop.hidden = true;
    });
    document.addEventListener("dragover", (e) => {
      if (hasFiles(e)) e.preventDefault();
    });
    document.addEventListener("drop", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      drop.hidden = true;
      const file = Array.from(e.dataTransfer?.files ?? []).find((f) => f.type.startsWith("image/")) ?? e.dataTransfer?.files[0];
      if (file) void this.attach(file);
    });
    paste.addEventListener("paste", (e) => {
      const file = Array.from(/** @type {ClipboardEvent} */ (e).clipboardData?.files ?? []).find((f) => f.type.startsWith("image/"));
      if (!file) return;
      e.preventDefault();
      void this.attach(file, file.name && file.name !== "image.png" ? file.name : `pasted-${newId()}.png`);
    });
  }

  /** Open the file picker. */
  pick() {
    this.input.click();
  }

  /**
   * Check a file and attach it (replacing any attachment); tells `onAttach` or `onRefuse`.
   * @param {File} file
   * @param {string} [name]  the name to show and send (default: the file's)
   */
  async attach(file, name) {
    let upload;
    try {
      upload = await readUpload(file, name);
    } catch (err) {
      this.onRefuse(err instanceof Error ? err.message : String(err));
      return;
    }
    this.set(upload);
    this.onAttach(upload);
  }

  /**
   * Attach an upload, or drop the attachment (null); the chip shows it.
   * @param {Upload | null} upload
   */
  set(upload) {
    this.current = upload;
    const chip = this.chip;
    const old = chip.querySelector("img");
    if (old?.src) URL.revokeObjectURL(old.src);
    clear(chip);
    chip.hidden = !upload;
    if (!upload) return;
    chip.append(
      h("img", { src: URL.createObjectURL(upload.blob), alt: "", class: "chip-thumb" }),
      h("span", { class: "chip-name", text: `${upload.name} ${upload.width}x${upload.height}` }),
      h("button", { type: "button", class: "btn chip-x", "aria-label": "remove the attached image", text: "[x]", onclick: () => this.set(null) }),
    );
  }

  /**
   * The attachment, handed to one request: it is dropped from the prompt.
   * @returns {Upload | null}
   */
  take() {
    const upload = this.current;
    if (upload) this.set(null);
    return upload;
  }
}
