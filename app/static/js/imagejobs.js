// @ts-check
/**
 * Pictures as jobs, so a reload or a closed tab does not lose one (docs/jobs.md).
 *
 * `/image` starts a job on the proxy (api.startImageJob) and notes it in this browser
 * as pending (task id, model, prompt, the last event seen). When the page comes back,
 * `pending()` lists what was still being made, and api.followImageJob picks each one up
 * where it stopped. A picture is forgotten from the pending list once it is shown,
 * failed, or was stopped.
 */

import { getPref, setPref } from "./store.js";

const KEY = "pendingImages";
const MAX_PENDING = 20;

/**
 * @typedef {{taskId: string, model: string, prompt: string, startedAt: number, lastEventId: string}} PendingImage
 */

/** @returns {PendingImage[]} */
export function pending() {
  try {
    const list = JSON.parse(getPref(KEY) ?? "[]");
    return Array.isArray(list) ? list.filter((p) => p && typeof p.taskId === "string") : [];
  } catch {
    return [];
  }
}

/** @param {PendingImage[]} list */
function save(list) {
  setPref(KEY, list.length ? JSON.stringify(list.slice(-MAX_PENDING)) : null);
}

/** @param {PendingImage} job */
export function remember(job) {
  save([...pending().filter((p) => p.taskId !== job.taskId), job]);
}

/**
 * @param {string} taskId
 * @param {string} lastEventId
 */
export function progress(taskId, lastEventId) {
  save(pending().map((p) => (p.taskId === taskId ? { ...p, lastEventId } : p)));
}

/** @param {string} taskId */
export function forget(taskId) {
  save(pending().filter((p) => p.taskId !== taskId));
}
