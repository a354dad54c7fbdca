// @ts-check
/**
 * Images in the scrollback: an inline view with a retro touch (scanlines and a
 * phosphor tint that lift on hover or focus, a top-to-bottom scan-in), opened
 * full size in a dialog, or saved. Uploads are read in uploads.js.
 */

import { h } from "./dom.js";

/** Images smaller than this (longest side, CSS px) are shown scaled up. */
const MIN_SHOWN_PX = 256;

/** The same, in the full-size view. */
const LIGHTBOX_MIN_PX = 512;

/**
 * A data: URL for a blob (for vision content parts).
 * @param {Blob} blob
 * @returns {Promise<string>}
 */
export function blobToDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/**
 * @param {string} type
 */
function extension(type) {
  return { "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif", "image/bmp": "bmp" }[type] ?? "png";
}

/** Owns the object URLs of shown images and the full-size dialog. */
export class ImageViewer {
  /** @param {HTMLDialogElement} dialog  the page's #lightbox */
  constructor(dialog) {
    this.dialog = dialog;
    /** @private @type {Set<string>} */
    this.urls = new Set();
    dialog.addEventListener("click", (e) => {
      // A click on the backdrop (the dialog itself, not its content) closes it.
      if (e.target === dialog) dialog.close();
    });
    dialog.addEventListener("close", () => {
      const img = dialog.querySelector("img");
      if (img) img.removeAttribute("src");
    });
  }

  /**
   * An inline image with its caption and actions; `onDelete` adds [delete] (it rejects
   * with what went wrong, shown in place of the size).
   * @param {{blob: Blob, caption: string, filename: string, alt: string,
   *          onDelete?: () => Promise<void>}} args
   * @returns {HTMLElement}
   */
  card({ blob, caption, filename, alt, onDelete }) {
    const url = URL.createObjectURL(blob);
    this.urls.add(url);
    const name = `${filename}.${extension(blob.type)}`;
    const img = h("img", { src: url, alt, decoding: "async", class: "retro-img" });
    img.addEventListener("load", () => {
      meta.textContent = `${img.naturalWidth}x${img.naturalHeight}`;
      // Small pictures are blown up by a whole factor with hard pixels: legible, and retro.
      const factor = Math.floor(MIN_SHOWN_PX / Math.max(img.naturalWidth, img.naturalHeight, 1));
      if (factor > 1) {
        img.style.width = `${img.naturalWidth * factor}px`;
        img.classList.add("pixelated");
      }
      frame.classList.add("loaded");
    });
    img.addEventListener("error", () => {
      frame.classList.add("broken");
      meta.textContent = "could not be decoded";
    });
    const frame = h(
      "button",
      { type: "button", class: "crt", "aria-label": `open full size: ${alt}`, onclick: () => this.open(url, name, alt) },
      img,
    );
    const meta = h("span", { class: "img-meta", text: "…" });
    return h(
      "figure",
      { class: "image-card" },
      frame,
      h(
        "figcaption",
        {},
        h("span", { class: "img-caption", text: caption }),
        " ",
        meta,
        " ",
        h("a", { href: url, target: "_blank", rel: "noopener", class: "img-action", text: "[open]" }),
        " ",
        h("a", { href: url, download: name, class: "img-action", text: "[save]" }),
        onDelete ? " " : null,
        onDelete
          ? h("button", {
              type: "button",
              class: "img-action img-delete",
              "aria-label": `delete: ${alt}`,
              text: "[delete]",
              onclick: (/** @type {Event} */ e) => {
                const button = /** @type {HTMLButtonElement} */ (e.currentTarget);
                button.disabled = true;
                meta.textContent = "deleting…";
                onDelete().catch((/** @type {unknown} */ err) => {
                  button.disabled = false;
                  meta.textContent = `not deleted: ${err instanceof Error ? err.message : err}`;
                });
              },
            })
          : null,
      ),
    );
  }

  /**
   * Full size, without the retro effect.
   * @param {string} url
   * @param {string} name
   * @param {string} alt
   */
  open(url, name, alt) {
    const img = this.dialog.querySelector("img");
    const save = this.dialog.querySelector("a[download]");
    const title = this.dialog.querySelector(".lightbox-title");
    if (img) {
      // Small pictures are shown at a whole multiple of their size, with hard pixels.
      img.onload = () => {
        const factor = Math.floor(LIGHTBOX_MIN_PX / Math.max(img.naturalWidth, img.naturalHeight, 1));
        img.style.width = factor > 1 ? `${img.naturalWidth * factor}px` : "";
        img.classList.toggle("pixelated", factor > 1);
      };
      img.src = url;
      img.alt = alt;
    }
    if (save instanceof HTMLAnchorElement) {
      save.href = url;
      save.download = name;
    }
    if (title) title.textContent = name;
    if (!this.dialog.open) this.dialog.showModal();
  }

  /** Release every shown image (the screen was cleared). */
  releaseAll() {
    if (this.dialog.open) this.dialog.close();
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls.clear();
  }
}
