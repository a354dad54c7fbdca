// @ts-check
/**
 * What survives a reload, all in this browser: small values and the transcript in
 * localStorage, image bytes in IndexedDB (too big for localStorage's quota).
 * Nothing here throws on a full or disabled storage: writes are best effort and
 * reads fall back to defaults.
 */

const PREFIX = "homelab-ai.";
const MAX_ENTRIES = 400;
const MAX_HISTORY = 200;

/**
 * @typedef {{id: string, name: string, stored?: string, deleted?: boolean}} ImageRef
 *   `id`: the blob's key in this browser; `stored`: the picture's name in the proxy's image
 *   store (it came as a URL), for [delete]; `deleted`: deleted there and here
 * @typedef {{id: string, t: "user", text: string, model: string, mode: "chat" | "image", image?: ImageRef}} UserEntry
 * @typedef {{id: string, t: "assistant", text: string, model: string, stopped?: boolean, truncated?: boolean}} AssistantEntry
 * @typedef {{id: string, t: "image", model: string, prompt: string, images: ImageRef[], edit?: boolean, seconds?: number}} ImageEntry
 * @typedef {{id: string, t: "error", text: string}} ErrorEntry
 * @typedef {UserEntry | AssistantEntry | ImageEntry | ErrorEntry} Entry
 */

/** A fresh id for entries and stored images. */
export function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * A small string value ("model", "apiKey", "theme").
 * @param {string} name
 * @returns {string | null}
 */
export function getPref(name) {
  try {
    return localStorage.getItem(PREFIX + name);
  } catch {
    return null;
  }
}

/**
 * @param {string} name
 * @param {string | null} value  null removes it
 */
export function setPref(name, value) {
  try {
    if (value === null) localStorage.removeItem(PREFIX + name);
    else localStorage.setItem(PREFIX + name, value);
  } catch {
    // storage disabled or full: the value lives until the page closes
  }
}

/**
 * @template T
 * @param {string} name
 * @param {T} fallback
 * @returns {T}
 */
function readJson(name, fallback) {
  const raw = getPref(name);
  if (!raw) return fallback;
  try {
    const value = JSON.parse(raw);
    return Array.isArray(fallback) === Array.isArray(value) ? value : fallback;
  } catch {
    return fallback;
  }
}

/**
 * Write JSON; when the quota is exceeded, drop the oldest half of an array and retry.
 * @param {string} name
 * @param {unknown[]} value
 */
function writeList(name, value) {
  let list = value;
  for (;;) {
    try {
      localStorage.setItem(PREFIX + name, JSON.stringify(list));
      return;
    } catch {
      if (list.length <= 1) return;
      list = list.slice(Math.floor(list.length / 2));
    }
  }
}

/** @returns {Entry[]} */
export function loadTranscript() {
  return readJson("transcript", /** @type {Entry[]} */ ([])).filter(
    (e) => e && typeof e === "object" && typeof e.id === "string" && typeof e.t === "string",
  );
}

/** @param {Entry[]} entries */
export function saveTranscript(entries) {
  writeList("transcript", entries.slice(-MAX_ENTRIES));
}

/** @returns {string[]} */
export function loadHistory() {
  return readJson("history", /** @type {string[]} */ ([])).filter((s) => typeof s === "string");
}

/** @param {string[]} lines */
export function saveHistory(lines) {
  writeList("history", lines.slice(-MAX_HISTORY));
}

/**
 * The chat options `/set` keeps (`max_tokens`, `temperature`, `top_p`), sent with every message.
 * @returns {Record<string, number>}
 */
export function loadOptions() {
  const value = readJson("options", /** @type {Record<string, number> | null} */ (null));
  return value && typeof value === "object" ? value : {};
}

/** @param {Record<string, number>} options */
export function saveOptions(options) {
  setPref("options", JSON.stringify(options));
}

/**
 * Image blobs by id, in IndexedDB; in memory when IndexedDB is unavailable.
 */
export class ImageStore {
  constructor() {
    /** @private @type {Map<string, Blob>} */
    this.memory = new Map();
    /** @private @type {Promise<IDBDatabase | null>} */
    this.db = new Promise((resolve) => {
      try {
        const req = indexedDB.open("homelab-ai", 1);
        req.onupgradeneeded = () => req.result.createObjectStore("images");
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => resolve(null);
        req.onblocked = () => resolve(null);
      } catch {
        resolve(null);
      }
    });
  }

  /**
   * Run one request in a transaction; resolves with its result (undefined on failure).
   * @private
   * @param {IDBTransactionMode} mode
   * @param {(store: IDBObjectStore) => IDBRequest} work
   * @returns {Promise<any>}
   */
  async run(mode, work) {
    const db = await this.db;
    if (!db) return undefined;
    return new Promise((resolve) => {
      try {
        const tx = db.transaction("images", mode);
        const req = work(tx.objectStore("images"));
        tx.oncomplete = () => resolve(req.result);
        tx.onerror = () => resolve(undefined);
        tx.onabort = () => resolve(undefined);
      } catch {
        resolve(undefined);
      }
    });
  }

  /**
   * @param {string} id
   * @param {Blob} blob
   */
  async put(id, blob) {
    this.memory.set(id, blob);
    await this.run("readwrite", (s) => s.put(blob, id));
  }

  /**
   * @param {string} id
   * @returns {Promise<Blob | null>}
   */
  async get(id) {
    const mem = this.memory.get(id);
    if (mem) return mem;
    const blob = await this.run("readonly", (s) => s.get(id));
    return blob instanceof Blob ? blob : null;
  }

  /**
   * Delete every stored image whose id is not in `keep` (after the transcript was trimmed or cleared).
   * @param {Set<string>} keep
   */
  async prune(keep) {
    for (const id of [...this.memory.keys()]) if (!keep.has(id)) this.memory.delete(id);
    /** @type {IDBValidKey[] | undefined} */
    const ids = await this.run("readonly", (s) => s.getAllKeys());
    const stale = (ids ?? []).filter((id) => !keep.has(String(id)));
    if (stale.length) {
      await this.run("readwrite", (s) => {
        let last = s.delete(stale[0]);
        for (const id of stale.slice(1)) last = s.delete(id);
        return last;
      });
    }
  }
}
