// @ts-check
/**
 * Speech in the terminal: the microphone (record with MediaRecorder, transcribe through
 * v1/audio/transcriptions into the prompt) and the speaker (text through v1/audio/speech,
 * played with Web Audio, one clip after the other: /say, and answers spoken sentence by
 * sentence as they stream). Network calls go through api.js; what to say about a
 * refusal is here (`micRefusal`), printing is the terminal's.
 *
 * Web Audio (not an <audio> element with a blob: URL) plays the clips, so the page's
 * Content-Security-Policy needs no media-src. Browsers let a page make sound only after
 * a user gesture: the terminal calls `Speaker.unlock` from each submitted line.
 */

/** @typedef {import("./api.js").Api} Api */

/** Pressed longer than this, the [mic] button records while held (push to talk); a shorter press toggles. */
export const HOLD_MS = 350;

/** Longest recording (then it stops by itself), in ms. */
export const MAX_RECORDING_MS = 120_000;

/**
 * Cuts streamed text into sentences: `feed` returns the sentences completed so far
 * (ending in . ! ? or a line break, followed by space), `end` the rest.
 */
export class SentenceSplitter {
  constructor() {
    this.buffer = "";
  }

  /**
   * @param {string} piece
   * @returns {string[]}
   */
  feed(piece) {
    this.buffer += piece;
    /** @type {string[]} */
    const out = [];
    const end = /([.!?…]+["')\]]*\s+|\n\s*)/g;
    let from = 0;
    let match;
    while ((match = end.exec(this.buffer))) {
      const sentence = this.buffer.slice(from, match.index + match[0].length).trim();
      from = match.index + match[0].length;
      if (speakable(sentence)) out.push(sentence);
    }
    this.buffer = this.buffer.slice(from);
    return out;
  }

  /** @returns {string[]}  what is left, as a last sentence */
  end() {
    const rest = this.buffer.trim();
    this.buffer = "";
    return speakable(rest) ? [rest] : [];
  }
}

/**
 * Worth speaking: has a letter or a digit once markdown marks are gone.
 * @param {string} text
 */
function speakable(text) {
  return /[\p{L}\p{N}]/u.test(text.replace(/[`*_#>|~-]/g, ""));
}

/**
 * Text as it should be spoken: markdown marks and code fences left out.
 * @param {string} text
 */
export function plain(text) {
  return text
    .replace(/```[\s\S]*?```/g, " ")
    .replace(/[`*_#>|~]/g, "")
    .replace(/\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/\s+/g, " ")
    .trim();
}

/**
 * What to tell the user when the microphone cannot be used.
 * @param {unknown} err  from getUserMedia or MediaRecorder, or null for "no API at all"
 * @returns {string}
 */
export function micRefusal(err) {
  if (!globalThis.isSecureContext) {
    return "the microphone needs a secure page: open this UI over https, or at localhost / 127.0.0.1";
  }
  if (!navigator.mediaDevices?.getUserMedia) return "this browser gives pages no microphone (no getUserMedia)";
  if (typeof MediaRecorder === "undefined") return "this browser cannot record audio (no MediaRecorder)";
  const name = err instanceof DOMException ? err.name : "";
  if (name === "NotAllowedError" || name === "SecurityError") {
    return (
      "microphone permission refused: allow the microphone for this site (the icon left of the address; " +
      "on a phone, the browser's site settings), then press [mic] again"
    );
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") return "no microphone found: plug one in, or check the system's sound settings";
  if (name === "NotReadableError" || name === "AbortError") return "the microphone is busy or was taken by another program";
  return `the microphone failed: ${err instanceof Error ? err.message : String(err)}`;
}

/**
 * The [mic] button: press and hold to talk, or press once to start and again to stop.
 * Each recording is handed to `onRecorded` (a Blob and its file name).
 */
export class Microphone {
  /**
   * @param {{button: HTMLButtonElement,
   *          onRecorded: (audio: Blob, filename: string) => void | Promise<void>,
   *          onRefused: (message: string) => void,
   *          onState?: (recording: boolean) => void,
   *          canStart?: () => boolean}} options
   *   `canStart`: false to refuse a press (no stt model; the terminal says why)
   */
  constructor({ button, onRecorded, onRefused, onState, canStart }) {
    this.button = button;
    this.onRecorded = onRecorded;
    this.onRefused = onRefused;
    this.onState = onState ?? (() => {});
    this.canStart = canStart ?? (() => true);
    /** @type {MediaRecorder | null} */
    this.recorder = null;
    /** @type {Promise<void> | null} */
    this.starting = null;
    this.pressedAt = 0;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.limit = null;
    button.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      this.pressedAt = performance.now();
      if (this.recorder || this.starting) void this.stop();
      else void this.start();
    });
    button.addEventListener("pointerup", () => {
      // held: push to talk, so letting go stops; a short press leaves it recording (toggle)
      if (this.pressedAt && performance.now() - this.pressedAt >= HOLD_MS && (this.recorder || this.starting)) void this.stop();
      this.pressedAt = 0;
    });
    button.addEventListener("contextmenu", (e) => e.preventDefault()); // a phone's long press
    button.addEventListener("keydown", (e) => {
      if (e.key !== "Enter" && e.key !== " ") return;
      e.preventDefault();
      if (this.recorder || this.starting) void this.stop();
      else void this.start();
    });
  }

  get recording() {
    return this.recorder !== null || this.starting !== null;
  }

  /** Ask for the microphone and start recording (a refusal is reported, not thrown). */
  async start() {
    if (this.recording) return;
    if (!this.canStart()) return;
    if (!globalThis.isSecureContext || !navigator.mediaDevices?.getUserMedia || typeof MediaRecorder === "undefined") {
      this.onRefused(micRefusal(null));
      return;
    }
    this.setState(true);
    this.starting = (async () => {
      /** @type {MediaStream} */
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      } catch (err) {
        this.starting = null;
        this.setState(false);
        this.onRefused(micRefusal(err));
        return;
      }
      const type = ["audio/webm;codecs=opus", "audio/webm", "audio/ogg;codecs=opus", "audio/mp4"].find((t) => MediaRecorder.isTypeSupported(t));
      const recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
      /** @type {Blob[]} */
      const parts = [];
      recorder.addEventListener("dataavailable", (e) => {
        if (e.data.size) parts.push(e.data);
      });
      recorder.addEventListener("stop", () => {
        for (const track of stream.getTracks()) track.stop();
        const mime = recorder.mimeType || type || "audio/webm";
        const ext = mime.includes("ogg") ? "ogg" : mime.includes("mp4") ? "m4a" : "webm";
        const audio = new Blob(parts, { type: mime.split(";")[0] });
        if (audio.size) void this.onRecorded(audio, `recording.${ext}`);
        else this.onRefused("the microphone recorded nothing");
      });
      recorder.start();
      this.recorder = recorder;
      this.starting = null;
      this.limit = setTimeout(() => void this.stop(), MAX_RECORDING_MS);
    })();
    await this.starting;
  }

  /** Stop recording: the recording goes to `onRecorded`. */
  async stop() {
    if (this.starting) await this.starting;
    if (this.limit) clearTimeout(this.limit);
    this.limit = null;
    const recorder = this.recorder;
    this.recorder = null;
    this.setState(false);
    if (recorder && recorder.state !== "inactive") recorder.stop();
  }

  /** @param {boolean} on */
  setState(on) {
    this.button.classList.toggle("recording", on);
    this.button.setAttribute("aria-pressed", String(on));
    this.button.textContent = on ? "[rec]" : "[mic]";
    document.documentElement.dataset.mic = on ? "recording" : "";
    this.onState(on);
  }
}

/**
 * Plays speech, one clip after the other: each clip is asked for at once (so the next
 * sentence is synthesised while this one plays) and played in order.
 */
export class Speaker {
  /**
   * @param {{api: Api, onError: (err: unknown) => void}} options
   */
  constructor({ api, onError }) {
    this.api = api;
    this.onError = onError;
    /** @type {AudioContext | null} */
    this.context = null;
    /** When the last queued clip ends, on the context's clock. */
    this.until = 0;
    /** Playing order: each clip waits for the one before it. */
    this.chain = Promise.resolve();
    this.controller = new AbortController();
    /** Clips played since the page loaded (the browser tests read it). */
    this.played = 0;
  }

  /** Make (or wake) the audio context: call from a user gesture (a key press, a click). */
  unlock() {
    try {
      this.context ??= new AudioContext();
      if (this.context.state === "suspended") void this.context.resume();
    } catch {
      // no Web Audio: say() reports it
    }
  }

  /**
   * Speak `text` with `model` after what is queued; resolves when its clip is scheduled
   * (with its length in seconds), rejects when it failed (also reported to `onError`
   * unless stopped).
   * @param {string} model
   * @param {string} text
   * @param {string} [voice]
   * @returns {Promise<number>}
   */
  say(model, text, voice) {
    const signal = this.controller.signal;
    const bytes = this.api.speech({ model, input: text, voice, signal });
    bytes.catch(() => {}); // handled below, in order
    const turn = this.chain.then(async () => {
      const data = await bytes;
      if (signal.aborted) throw signal.reason;
      this.unlock();
      const context = this.context;
      if (!context) throw new Error("this browser cannot play audio (no Web Audio)");
      const buffer = await context.decodeAudioData(data);
      const source = context.createBufferSource();
      source.buffer = buffer;
      source.connect(context.destination);
      const at = Math.max(context.currentTime, this.until);
      source.start(at);
      this.until = at + buffer.duration;
      this.played += 1;
      document.documentElement.dataset.spoken = String(this.played);
      signal.addEventListener("abort", () => source.stop(), { once: true });
      return buffer.duration;
    });
    this.chain = turn.then(
      () => {},
      (err) => {
        if (!signal.aborted) this.onError(err);
      },
    );
    return turn;
  }

  /** Stop what plays and drop what is queued. */
  stop() {
    this.controller.abort();
    this.controller = new AbortController();
    this.chain = Promise.resolve();
    this.until = 0;
  }
}
