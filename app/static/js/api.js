// @ts-check
/**
 * The one module that talks to the network. Everything goes to the proxy that
 * served the page (relative URLs, so a reverse-proxy sub-path works too):
 * the OpenAI endpoints under v1/, the manager's state events at api/events, and
 * jobs (JSON-RPC at rpc, a job's events at stream/{taskId}; docs/jobs.md).
 *
 * Every failure surfaces as an ApiError carrying the OpenAI error envelope's
 * fields; a cancelled request rejects with the AbortSignal's reason
 * (a DOMException named "AbortError") so callers can tell "stopped" from "failed".
 */

import { SseParser } from "./sse.js";

/**
 * @typedef {object} ModelInfo
 * @property {string} id
 * @property {"text" | "image" | "embedding" | "stt" | "tts" | string} type
 * @property {string} state  stopped | starting | ready | stopping | failed | falling_asleep | sleeping | waking
 * @property {string} [description]
 * @property {string[]} [sizes]
 * @property {number} [max_n]
 * @property {string | null} [last_error]
 * @property {number | null} [gpu_memory_mib]  GPU memory it declares (models.json)
 * @property {number | null} [observed_gpu_memory_mib]  GPU memory it was seen to take
 * @property {boolean} [pinned]
 * @property {number | null} [warm_level]  models.json warm.level: kept warm in host memory (null: never)
 * @property {number | null} [host_memory_mib]  host memory it holds asleep (declared or measured)
 * @property {number | null} [wake_seconds]  how long a wake usually takes (learned)
 * @property {number | null} [load_seconds]  how long a cold start usually takes (learned)
 * @property {boolean} [vision]  text models: takes images in chat messages
 * @property {boolean} [tools]  text models: calls tools (models.json tool_calls)
 * @property {"vllm" | "llama.cpp" | "diffusers" | "remote" | string} [backend]  who serves it
 * @property {string} [endpoint]  remote models: the proxy catalogue's endpoint
 * @property {boolean | null} [reachable]  remote models: the endpoint's last health poll (null: not yet)
 * @property {string[]} [fallbacks]  the models tried after it (the proxy's catalogue)
 * @property {string[]} [hosts]  several GPU hosts: those that can serve it (docs/hosts.md)
 * @property {string[]} [resident_on]  several hosts: where it is ready now
 * @property {string[]} [loading_on]  several hosts: where it is loading or waking
 * @property {string[]} [away_on]  several hosts: those away (unreachable or asleep) now
 */

/**
 * @typedef {{type: "text", text: string} | {type: "image_url", image_url: {url: string}}} ContentPart
 * @typedef {{role: "system" | "user" | "assistant", content: string | ContentPart[]}} ChatMessage
 */

/**
 * A picture from an images answer; `stored` is its name in the proxy's image store (an
 * answer with URLs), which the key that made it may delete (`deleteImage`).
 * @typedef {{blob: Blob, stored?: string}} Picture
 */

/**
 * @typedef {object} StateEvent
 * @property {"snapshot" | "state" | "swap" | string} event
 * @property {any} data  parsed JSON (snapshot: ModelInfo[]; state: {model, state, previous, at, error}; swap: {from, to, at})
 */

/** An error the proxy (or the network) reported, shaped like OpenAI's envelope. */
/**
 * @typedef {object} KeyInfo  who a key is (GET v1/usage's "key"; never the key itself)
 * @property {string} name
 * @property {boolean} admin
 * @property {string} priority  high, normal or low
 * @property {string[]} models  the patterns of the models it may use
 * @property {number | null} rate  requests a minute
 * @property {number | null} concurrency
 * @property {number | null} gpu_day  GPU-seconds a day
 * @property {number | null} gpu_month  GPU-seconds a month
 */

/**
 * @typedef {object} ModelUsage
 * @property {string} model
 * @property {number} requests
 * @property {number} prompt_tokens
 * @property {number} completion_tokens
 * @property {number} gpu_seconds
 */

/**
 * @typedef {object} KeyUsage
 * @property {string} key  the key's name
 * @property {number} gpu_seconds_today
 * @property {number} gpu_seconds_this_month
 * @property {Record<string, number>} refused  requests refused by a limit, by reason
 * @property {ModelUsage[]} models
 */

/**
 * @typedef {object} Usage
 * @property {KeyInfo} key
 * @property {KeyUsage[]} data
 */

export class ApiError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, type?: string, code?: string | null, param?: string | null, source?: string | null}} [fields]
   */
  constructor(message, fields = {}) {
    super(message);
    this.name = "ApiError";
    /** HTTP status; 0 when the proxy could not be reached. */
    this.status = fields.status ?? 0;
    this.type = fields.type ?? "api_error";
    this.code = fields.code ?? null;
    this.param = fields.param ?? null;
    /** Which component produced it: "proxy" | "manager" | "model_server" | "network" | null. */
    this.source = fields.source ?? null;
  }
}

/**
 * True when `err` is the rejection of a cancelled request.
 * @param {unknown} err
 */
export function isAbort(err) {
  return err instanceof DOMException && err.name === "AbortError";
}

/**
 * Build an ApiError from a non-2xx response, reading the OpenAI envelope when there is one.
 * @param {Response} res
 * @returns {Promise<ApiError>}
 */
async function errorFrom(res) {
  let text = "";
  try {
    text = await res.text();
  } catch {
    // the body is gone; the status line still says something
  }
  // 429 (the GPU is busy) and 503 may say when to come back.
  const retry = Number(res.headers.get("retry-after"));
  const later = Number.isFinite(retry) && retry > 0 ? ` (try again in ${Math.ceil(retry)} s)` : "";
  try {
    const body = JSON.parse(text);
    const err = body && typeof body === "object" ? body.error ?? body : null;
    if (err && typeof err === "object" && typeof err.message === "string") {
      return new ApiError(err.message + later, { status: res.status, ...err });
    }
    if (typeof err === "string") return new ApiError(err, { status: res.status });
    if (body && typeof body.detail === "string") return new ApiError(body.detail, { status: res.status });
  } catch {
    // not JSON: fall through
  }
  const snippet = text.replace(/\s+/g, " ").trim().slice(0, 200);
  return new ApiError(
    `the proxy answered ${res.status} ${res.statusText || ""}`.trim() + (snippet ? `: ${snippet}` : ""),
    { status: res.status, source: "proxy" },
  );
}

/** Pauses before retrying a GET that failed without an answer. */
const GET_RETRY_DELAYS_MS = [300, 1000];

/**
 * Resolve after `ms`, or at once when `signal` aborts.
 * @param {number} ms
 * @param {AbortSignal | null} [signal]
 * @returns {Promise<void>}
 */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

/** The picture types the UI shows, opens and saves; any other answer is an error. */
export const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"];

/**
 * A picture from a model server's answer, typed by what its bytes are. Never by
 * what the server says: a blob typed text/html and opened with [open] would be a
 * page running in the proxy's origin, next to the stored API key.
 * @param {Uint8Array<ArrayBuffer>} bytes
 * @param {string | null} [declared]  the Content-Type it came with (a `url` answer), if any
 * @returns {Blob}
 * @throws {ApiError} when the bytes are not a PNG, JPEG or WebP picture, or the declared
 *   type is another one.
 */
export function imageBlob(bytes, declared = null) {
  const type = sniffImageType(bytes);
  const said = declared?.split(";")[0].trim().toLowerCase() ?? null;
  if (!type || (said !== null && !IMAGE_TYPES.includes(said))) {
    const what = said !== null && !IMAGE_TYPES.includes(said) ? said : "its bytes are no picture";
    throw new ApiError(`the model server sent a picture that is not PNG, JPEG or WebP (${what}); it is not shown`, {
      type: "bad_image",
      source: "model_server",
    });
  }
  return new Blob([bytes], { type });
}

/**
 * Decode base64 into a picture (see `imageBlob`).
 * @param {string} b64
 * @returns {Blob}
 * @throws {ApiError} when it is not base64 of a PNG, JPEG or WebP picture.
 */
export function base64ToBlob(b64) {
  let bin;
  try {
    bin = atob(b64);
  } catch {
    throw new ApiError("the model server sent an image that is not valid base64", { type: "bad_image", source: "model_server" });
  }
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return imageBlob(bytes);
}

/**
 * The picture type from magic bytes (PNG, JPEG or WebP), or null.
 * @param {Uint8Array} b
 */
function sniffImageType(b) {
  const starts = (/** @type {number[]} */ sig, at = 0) => sig.every((v, i) => b[at + i] === v);
  if (starts([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return "image/png";
  if (starts([0xff, 0xd8, 0xff])) return "image/jpeg";
  if (starts([0x52, 0x49, 0x46, 0x46]) && starts([0x57, 0x45, 0x42, 0x50], 8)) return "image/webp";
  return null;
}

/**
 * The client for one page. Holds no settings of its own: the key comes from
 * `getKey` at each request, so changing it takes effect at once.
 * @param {{getKey: () => string | null, base?: string}} options
 */
export function createApi({ getKey, base = document.baseURI }) {
  /**
   * @param {string} path
   * @param {RequestInit} [init]
   * @returns {Promise<Response>} a 2xx response
   * @throws {ApiError | DOMException}
   */
  async function request(path, init = {}) {
    const url = new URL(path, base);
    const headers = new Headers(init.headers);
    const key = getKey();
    // The key goes to the proxy only, never to another host an answer points at.
    if (key && url.origin === new URL(base).origin) headers.set("Authorization", `Bearer ${key}`);
    // A GET that failed before any answer (the network blipped) is tried again; a POST
    // is not, because it may have reached the model already.
    const attempts = (init.method ?? "GET") === "GET" ? GET_RETRY_DELAYS_MS.length + 1 : 1;
    let res;
    for (let attempt = 1; ; attempt++) {
      try {
        res = await fetch(url, { ...init, headers });
        break;
      } catch (err) {
        if (isAbort(err) || init.signal?.aborted) throw init.signal?.reason ?? err;
        if (attempt >= attempts) {
          throw new ApiError(`cannot reach the proxy (${err instanceof Error ? err.message : err})`, {
            type: "network_error",
            source: "network",
          });
        }
        await sleep(GET_RETRY_DELAYS_MS[attempt - 1], init.signal);
      }
    }
    if (!res.ok) throw await errorFrom(res);
    return res;
  }

  /**
   * @param {string} path
   * @param {unknown} body
   * @param {AbortSignal} [signal]
   */
  function postJson(path, body, signal) {
    return request(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal,
    });
  }

  /**
   * Read a text/event-stream body, calling `onEvent` for each event.
   * Resolves when the stream ends; rejects with the signal's reason when cancelled.
   * @param {Response} res
   * @param {(e: import("./sse.js").SseEvent) => boolean | void} onEvent  return true to stop reading
   * @param {AbortSignal} [signal]
   */
  async function readSse(res, onEvent, signal) {
    if (!res.body) throw new ApiError("the proxy sent an empty stream", { source: "proxy" });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (signal?.aborted) throw signal.reason;
          throw new ApiError(`the stream broke off (${err instanceof Error ? err.message : err})`, {
            type: "network_error",
            source: "network",
          });
        }
        const events = chunk.done ? parser.end() : parser.feed(chunk.value);
        for (const event of events) if (onEvent(event)) return;
        if (chunk.done) return;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  /**
   * Images from an OpenAI ImagesResponse: b64_json decoded, url fetched; each must
   * be a PNG, JPEG or WebP picture (`imageBlob`). A picture the proxy stored says its
   * name there (`stored`), which `deleteImage` takes.
   * @param {any} body
   * @param {AbortSignal} [signal]
   * @returns {Promise<Picture[]>}
   */
  async function imagesFrom(body, signal) {
    const data = Array.isArray(body?.data) ? body.data : [];
    if (!data.length) throw new ApiError("the image server returned no image", { source: "model_server" });
    /** @type {Picture[]} */
    const out = [];
    for (const item of data) {
      if (typeof item?.b64_json === "string") out.push({ blob: base64ToBlob(item.b64_json) });
      else if (typeof item?.url === "string") {
        // A picture the proxy stored is fetched from this page's own proxy, whatever
        // address the URL names (HOMELAB_PUBLIC_URL may name another than this browser
        // uses, which the page's connect-src 'self' would refuse).
        const stored = /\/images\/([A-Za-z0-9_-]+\.[a-z]+)$/.exec(new URL(item.url, base).pathname);
        const res = await request(stored ? `images/${stored[1]}` : item.url, { signal });
        const blob = imageBlob(new Uint8Array(await res.arrayBuffer()), res.headers.get("Content-Type") ?? "");
        out.push(stored ? { blob, stored: stored[1] } : { blob });
      }
      else throw new ApiError("an image in the answer has neither b64_json nor url", { source: "model_server" });
    }
    return out;
  }

  return {
    /**
     * GET v1/models.
     * @param {AbortSignal} [signal]
     * @returns {Promise<ModelInfo[]>}
     */
    async listModels(signal) {
      const body = await (await request("v1/models", { signal })).json();
      return Array.isArray(body?.data) ? body.data : [];
    },

    /**
     * GET v1/usage: who the key is (its name and limits) and what it used; an admin key
     * gets every key's, or `key`'s alone.
     * @param {string} [key]
     * @returns {Promise<Usage>}
     */
    async usage(key) {
      const res = await request(key ? `v1/usage?key=${encodeURIComponent(key)}` : "v1/usage");
      return await res.json();
    },

    /**
     * POST v1/chat/completions with stream: true; `onDelta` gets each piece of text
     * as it arrives. Resolves with the finish reason (null when the stream ended
     * without one). Rejects with ApiError for HTTP errors and for an error event
     * in the stream, with the signal's reason when stopped.
     * `options` are extra request fields (max_tokens, temperature, top_p).
     * @param {{model: string, messages: ChatMessage[], options?: Record<string, number>,
     *          signal?: AbortSignal, onDelta: (text: string) => void}} args
     * @returns {Promise<string | null>}
     */
    async chatStream({ model, messages, options = {}, signal, onDelta }) {
      const res = await postJson("v1/chat/completions", { ...options, model, messages, stream: true }, signal);
      if (!(res.headers.get("content-type") ?? "").includes("text/event-stream")) {
        // A server that ignored stream: true answers with one JSON object.
        const body = await res.json();
        const choice = body?.choices?.[0];
        if (choice?.message?.content) onDelta(String(choice.message.content));
        return choice?.finish_reason ?? null;
      }
      /** @type {string | null} */
      let finish = null;
      /** @type {ApiError | null} */
      let failure = null;
      await readSse(
        res,
        (event) => {
          if (event.data === "[DONE]") return true;
          let chunk;
          try {
            chunk = JSON.parse(event.data);
          } catch {
            return false; // keep-alives and comments in other shapes
          }
          if (chunk?.error || event.event === "error") {
            const err = chunk?.error ?? chunk;
            failure = new ApiError(String(err?.message ?? "the model server failed mid-answer"), err ?? {});
            return true;
          }
          const choice = chunk?.choices?.[0];
          const piece = choice?.delta?.content;
          if (typeof piece === "string" && piece) onDelta(piece);
          if (choice?.finish_reason) finish = choice.finish_reason;
          return false;
        },
        signal,
      );
      if (failure) throw failure;
      return finish;
    },

    /**
     * POST v1/images/generations (response_format b64_json).
     * @param {{model: string, prompt: string, n?: number, size?: string, signal?: AbortSignal}} args
     * @returns {Promise<Picture[]>}
     */
    async generateImage({ model, prompt, n, size, signal }) {
      /** @type {Record<string, unknown>} */
      const body = { model, prompt, response_format: "b64_json" };
      if (n) body.n = n;
      if (size) body.size = size;
      const res = await postJson("v1/images/generations", body, signal);
      return imagesFrom(await res.json(), signal);
    },

    /**
     * Start a picture as a job (JSON-RPC create_image): resolves with its task id as
     * soon as the proxy has accepted it; the picture is made even if this page goes away.
     * @param {{model: string, prompt: string, n?: number, size?: string, signal?: AbortSignal}} args
     * @returns {Promise<string>}
     */
    async startImageJob({ model, prompt, n, size, signal }) {
      /** @type {Record<string, unknown>} */
      const params = { model, prompt };
      if (n) params.n = n;
      if (size) params.size = size;
      const res = await postJson("rpc", { jsonrpc: "2.0", id: 1, method: "create_image", params }, signal);
      const reply = await res.json();
      if (reply?.error) {
        const data = reply.error.data ?? {};
        throw new ApiError(String(data.message ?? reply.error.message), { ...data, status: 400, source: data.source ?? "proxy" });
      }
      return String(reply.result.taskId);
    },

    /**
     * Follow a job's events (GET stream/{taskId}) until it ends, resuming after
     * `lastEventId`; `onEvent(id)` is called with each stored event's id so a caller can
     * resume after a reload. Resolves with the pictures; rejects with ApiError when the
     * job failed or was cancelled (code "task_cancelled"), with the signal's reason when stopped.
     * @param {{taskId: string, lastEventId?: string, onEvent?: (id: string) => void, signal?: AbortSignal}} args
     * @returns {Promise<Picture[]>}
     */
    async followImageJob({ taskId, lastEventId = "0", onEvent, signal }) {
      /** @type {any} */
      let result = null;
      /** @type {any} */
      let end = null;
      for (let attempt = 0; !end && attempt < 5; attempt++) {
        const headers = { Accept: "text/event-stream", "Last-Event-ID": lastEventId };
        const res = await request(`stream/${encodeURIComponent(taskId)}`, { headers, signal });
        try {
          await readSse(
            res,
            (event) => {
              if (event.id) {
                lastEventId = event.id;
                onEvent?.(event.id);
              }
              const data = JSON.parse(event.data);
              if (event.event === "result") result = data;
              if (event.event === "state" && data.state === "FAILURE") end = { failed: data.error ?? {} };
              if (event.event === "end") end = end ?? data;
              return event.event === "end";
            },
            signal,
          );
        } catch (err) {
          if (isAbort(err) || signal?.aborted || !(err instanceof ApiError) || err.source !== "network") throw err;
          await sleep(1000, signal); // the stream broke off: resume where it stopped
        }
      }
      if (end?.failed) throw new ApiError(String(end.failed.message ?? "the picture failed"), end.failed);
      if (end?.state === "CANCELLED") throw new ApiError("the picture was cancelled", { code: "task_cancelled", source: "proxy" });
      if (!result) throw new ApiError("the picture's stream ended without a result", { source: "proxy" });
      return imagesFrom(result, signal);
    },

    /**
     * DELETE v1/images/{name}: the proxy's stored copy of a picture this key made; its URL
     * answers 404 from then on. Resolves true when deleted, false when the proxy no longer
     * has it (expired, deleted before, or another key's: the proxy does not say which).
     * @param {string} name  a `Picture`'s `stored`
     * @returns {Promise<boolean>}
     * @throws {ApiError}
     */
    async deleteImage(name) {
      try {
        await request(`v1/images/${encodeURIComponent(name)}`, { method: "DELETE" });
        return true;
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) return false;
        throw err;
      }
    },

    /**
     * Cancel a job (JSON-RPC tasks.cancel). Never throws: a finished job stays finished.
     * @param {string} taskId
     */
    async cancelTask(taskId) {
      try {
        await postJson("rpc", { jsonrpc: "2.0", id: 1, method: "tasks.cancel", params: { taskId } });
      } catch {
        // the proxy is unreachable: the job runs to its end and is forgotten later
      }
    },

    /**
     * POST v1/images/edits (multipart, as OpenAI defines it).
     * @param {{model: string, prompt: string, image: Blob, filename: string, n?: number,
     *          size?: string, signal?: AbortSignal}} args
     * @returns {Promise<Picture[]>}
     */
    async editImage({ model, prompt, image, filename, n, size, signal }) {
      const form = new FormData();
      form.append("model", model);
      form.append("prompt", prompt);
      form.append("image", image, filename);
      form.append("response_format", "b64_json");
      if (n) form.append("n", String(n));
      if (size) form.append("size", size);
      const res = await request("v1/images/edits", { method: "POST", body: form, signal });
      return imagesFrom(await res.json(), signal);
    },

    /**
     * POST v1/audio/transcriptions (multipart, as OpenAI defines it): what is said in a
     * recording, as text.
     * @param {{model: string, audio: Blob, filename: string, language?: string, signal?: AbortSignal}} args
     * @returns {Promise<string>}
     */
    async transcribe({ model, audio, filename, language, signal }) {
      const form = new FormData();
      form.append("model", model);
      form.append("file", audio, filename);
      form.append("response_format", "json");
      if (language) form.append("language", language);
      const res = await request("v1/audio/transcriptions", { method: "POST", body: form, signal });
      const body = await res.json();
      if (typeof body?.text !== "string") throw new ApiError("the transcription has no text", { source: "model_server" });
      return body.text;
    },

    /**
     * POST v1/audio/speech: `input` spoken by a text-to-speech model, as a WAV file's bytes.
     * @param {{model: string, input: string, voice?: string, signal?: AbortSignal}} args
     * @returns {Promise<ArrayBuffer>}
     */
    async speech({ model, input, voice, signal }) {
      /** @type {Record<string, unknown>} */
      const body = { model, input, response_format: "wav" };
      if (voice) body.voice = voice;
      const res = await postJson("v1/audio/speech", body, signal);
      return await res.arrayBuffer();
    },

    /**
     * GET v1/audio/voices?model=NAME: the voices of a text-to-speech model.
     * @param {string} model
     * @returns {Promise<{id: string, name: string, language: string, sample_rate: number}[]>}
     */
    async voices(model) {
      const body = await (await request(`v1/audio/voices?model=${encodeURIComponent(model)}`)).json();
      return Array.isArray(body?.data) ? body.data : [];
    },

    /**
     * Follow GET api/events (the manager's state events relayed by the proxy)
     * until `signal` aborts, reconnecting with backoff when the stream drops.
     * fetch() is used rather than EventSource so the Authorization header goes along.
     * Never rejects: a 401 reports status "unauthorized" and stops (call again after
     * a new key); other failures report "reconnecting" and retry.
     * @param {{onEvent: (e: StateEvent) => void,
     *          onStatus: (s: "connected" | "reconnecting" | "unauthorized" | "unavailable") => void,
     *          signal: AbortSignal}} args
     */
    async watchEvents({ onEvent, onStatus, signal }) {
      let delay = 1000;
      while (!signal.aborted) {
        try {
          const res = await request("api/events", { headers: { Accept: "text/event-stream" }, signal });
          onStatus("connected");
          delay = 1000;
          await readSse(
            res,
            (event) => {
              try {
                onEvent({ event: event.event, data: JSON.parse(event.data) });
              } catch {
                // a malformed event is skipped; the next snapshot repairs the view
              }
            },
            signal,
          );
        } catch (err) {
          if (signal.aborted) return;
          if (err instanceof ApiError && err.status === 401) {
            onStatus("unauthorized");
            return;
          }
          if (err instanceof ApiError && err.status === 404) {
            onStatus("unavailable");
            return;
          }
        }
        if (signal.aborted) return;
        onStatus("reconnecting");
        await sleep(delay, signal);
        delay = Math.min(delay * 2, 15000);
      }
    },
  };
}

/** @typedef {ReturnType<typeof createApi>} Api */
