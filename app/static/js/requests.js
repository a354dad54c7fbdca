// @ts-check
/**
 * The two requests a line becomes: a chat message whose answer streams into the
 * scrollback, and an image to generate (or to edit, with an attachment). Each one
 * records what was sent and what came back in the transcript, shows a waiting
 * line that follows the model's loading or swap, and can be stopped (Esc) through
 * the terminal's `begin`/`end`. Failures are printed, not thrown (a picture job's
 * go through `t.guarded`, which prints them).
 */

import { ApiError, isAbort } from "./api.js";
import { buildMessages } from "./conversation.js";
import { blobToDataUrl } from "./images.js";
import * as imageJobs from "./imagejobs.js";
import { SentenceSplitter, plain } from "./speech.js";
import { loadOptions, newId } from "./store.js";

/** @typedef {import("./terminal.js").Terminal} Terminal */
/** @typedef {import("./scrollback.js").StreamingAnswer} StreamingAnswer */

/**
 * Show "MODEL · thinking", updated with the model's loading/swapping state (from
 * events, or from polling /v1/models every 2 s while events are not flowing).
 * @param {Terminal} t
 * @param {string} model
 * @param {string} doing  e.g. "thinking", "painting"
 * @returns {{done: () => void}}  removes the line and stops following (safe to call twice)
 */
function waitFor(t, model, doing) {
  const pending = t.screen.pending(`${model} · ${doing}`);
  const update = () => {
    const s = t.states.get(model);
    const act = t.states.activity();
    if (s?.away.length) pending.set(`waiting for host ${s.away.join(", ")} (away or waking) · then ${doing}`);
    else if (act && (act.model === model || act.phase === "swapping")) pending.set(`${act.text} · then ${doing}`);
    else if (s?.state === "starting") pending.set(`loading ${model} · then ${doing}`);
    else if (s?.state === "waking") pending.set(`waking ${model} from host memory · then ${doing}`);
    else pending.set(`${model} · ${doing}`);
  };
  update();
  const unsubscribe = t.states.subscribe(update);
  const poll = setInterval(() => {
    if (t.eventsStatus !== "connected") t.refreshModels().catch(() => {});
  }, 2000);
  return {
    done: () => {
      clearInterval(poll);
      unsubscribe();
      pending.done();
    },
  };
}

/**
 * While answers are spoken ([spk], /speak on): a function taking each streamed piece (null
 * at the end) that speaks every sentence as soon as it is complete; null otherwise.
 * @param {Terminal} t
 * @returns {((piece: string | null) => void) | null}
 */
function speakAlong(t) {
  const model = t.speaking ? t.speechModel("tts") : null;
  if (!model) return null;
  const splitter = new SentenceSplitter();
  return (piece) => {
    const sentences = piece === null ? splitter.end() : splitter.feed(piece);
    for (const sentence of sentences) {
      const text = plain(sentence);
      if (text) t.speaker.say(model, text).catch(() => {}); // a failure is reported by the speaker
    }
  };
}

/**
 * Send a chat message (with the attachment, if any) to the current model and
 * stream the answer. Resolves when the answer is finished, stopped or failed.
 * @param {Terminal} t
 * @param {string} text
 */
export async function runChat(t, text) {
  const model = t.model;
  const attachment = t.uploads.take();
  /** @type {import("./store.js").UserEntry} */
  const entry = { id: newId(), t: "user", text, model, mode: "chat" };
  if (attachment) entry.image = await t.transcript.keepImage(attachment.blob, attachment.name);
  t.transcript.record(entry);
  t.transcript.render(entry);
  const imageUrl = attachment ? await blobToDataUrl(attachment.blob) : null;
  const messages = buildMessages(t.transcript.entries, imageUrl);

  const controller = t.begin();
  const wait = waitFor(t, model, "thinking");
  const voice = speakAlong(t);
  /** @type {StreamingAnswer | null} */
  let answer = null;
  let stopped = false;
  let failed = false;
  /** @type {string | null} */
  let finish = null;
  try {
    finish = await t.api.chatStream({
      model,
      messages,
      options: loadOptions(),
      signal: controller.signal,
      onDelta: (piece) => {
        if (!answer) {
          wait.done();
          answer = t.screen.stream(model);
        }
        answer.append(piece);
        voice?.(piece);
      },
    });
    voice?.(null);
  } catch (err) {
    if (isAbort(err)) stopped = true;
    else {
      failed = true;
      t.fail(err, true);
    }
  } finally {
    wait.done();
    t.end(controller);
  }
  // (a cast: TypeScript cannot see the assignment inside onDelta)
  const done = /** @type {StreamingAnswer | null} */ (answer);
  const truncated = finish === "length";
  if (done) {
    done.finish({ stopped, truncated });
    t.transcript.record({ id: newId(), t: "assistant", text: done.text, model, stopped, truncated });
  } else if (stopped) {
    t.screen.print("^C stopped before the first word", "dim");
  } else if (!failed) {
    t.screen.print(`(${model} answered with no text; finish reason: ${finish ?? "none"})`, "dim");
  }
}

/**
 * Generate an image with `model` (a job on the proxy, picked up again after a
 * reload), or edit the attachment if there is one (a plain request).
 * Resolves when the pictures are shown, or the request was stopped or failed.
 * @param {Terminal} t
 * @param {string} model
 * @param {{prompt: string, n?: number, size?: string}} req
 */
export async function runImage(t, model, req) {
  const attachment = t.uploads.take();
  /** @type {import("./store.js").UserEntry} */
  const entry = { id: newId(), t: "user", text: req.prompt, model, mode: "image" };
  if (attachment) entry.image = await t.transcript.keepImage(attachment.blob, attachment.name);
  t.transcript.record(entry);
  t.transcript.render(entry);
  if (model !== t.model) t.screen.print(`using image model ${model}`, "dim");

  if (!attachment) {
    // A new picture is a job on the proxy: a reload meanwhile picks it up (imagejobs.js).
    await t.guarded(async (controller) => {
      const taskId = await t.api.startImageJob({ model, prompt: req.prompt, n: req.n, size: req.size, signal: controller.signal });
      const job = { taskId, model, prompt: req.prompt, startedAt: Date.now(), lastEventId: "0" };
      imageJobs.remember(job);
      await followImageJob(t, job, controller);
    });
    return;
  }
  const controller = t.begin();
  const wait = waitFor(t, model, "editing");
  const started = performance.now();
  try {
    const pictures = await t.api.editImage({ model, prompt: req.prompt, image: attachment.blob, filename: attachment.name, n: req.n, size: req.size, signal: controller.signal });
    wait.done();
    await showImages(t, model, req.prompt, pictures, true, (performance.now() - started) / 1000);
  } catch (err) {
    wait.done();
    if (isAbort(err)) t.screen.print("^C stopped", "dim");
    else t.fail(err, true);
  } finally {
    t.end(controller);
  }
}

/**
 * Wait for a picture job and show it; Esc cancels the job on the proxy too.
 * Throws what stopped it (the caller, `t.guarded`, prints it).
 * @param {Terminal} t
 * @param {import("./imagejobs.js").PendingImage} job
 * @param {AbortController} controller
 */
export async function followImageJob(t, job, controller) {
  const wait = waitFor(t, job.model, "painting");
  const stop = () => void t.api.cancelTask(job.taskId);
  controller.signal.addEventListener("abort", stop);
  try {
    const pictures = await t.api.followImageJob({
      taskId: job.taskId,
      lastEventId: job.lastEventId,
      onEvent: (id) => imageJobs.progress(job.taskId, id),
      signal: controller.signal,
    });
    wait.done();
    await showImages(t, job.model, job.prompt, pictures, false, (Date.now() - job.startedAt) / 1000);
    imageJobs.forget(job.taskId);
  } catch (err) {
    wait.done();
    // Kept only when the network broke off: the next page load picks it up again.
    if (isAbort(err) || !(err instanceof ApiError && err.source === "network")) imageJobs.forget(job.taskId);
    throw err;
  } finally {
    controller.signal.removeEventListener("abort", stop);
  }
}

/**
 * Store pictures in this browser, record and draw them.
 * @param {Terminal} t
 * @param {string} model
 * @param {string} prompt
 * @param {import("./api.js").Picture[]} pictures
 * @param {boolean} edit
 * @param {number} seconds
 */
async function showImages(t, model, prompt, pictures, edit, seconds) {
  const images = await Promise.all(
    pictures.map((picture, i) => t.transcript.keepImage(picture.blob, `${model}-${i + 1}`, picture.stored)),
  );
  /** @type {import("./store.js").ImageEntry} */
  const result = {
    id: newId(),
    t: "image",
    model,
    prompt,
    images,
    edit,
    seconds: Math.round(seconds * 10) / 10,
  };
  t.transcript.record(result);
  t.transcript.render(result);
}
