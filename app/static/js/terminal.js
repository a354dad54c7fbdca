// @ts-check
/**
 * The terminal: wires the page's elements to the prompt, the scrollback, the
 * transcript, the uploads, the model states and the API, and runs what the user
 * types (a chat line, an image prompt, or a command from the table in
 * commands.js). It holds the session's state: the current model, the model
 * list, the request in flight, whether the API key is being typed. One instance
 * is made at start-up (main.js); nothing is put on `window`.
 */

import { ApiError, createApi, isAbort, sleep } from "./api.js";
import { applyTheme, findCommand, unknownCommand } from "./commands.js";
import { byId } from "./dom.js";
import { ImageViewer } from "./images.js";
import * as imageJobs from "./imagejobs.js";
import { parseInput } from "./input.js";
import { Prompt } from "./prompt.js";
import { followImageJob, runChat, runImage } from "./requests.js";
import { Scrollback } from "./scrollback.js";
import { Microphone, Speaker } from "./speech.js";
import { ModelStates } from "./status.js";
import { ImageStore, getPref, loadHistory, newId, saveHistory, setPref } from "./store.js";
import { Transcript } from "./transcript.js";
import { Uploads } from "./uploads.js";

/** @typedef {{auth_required: boolean, version: string, default_model: string | null}} PageConfig */
/** @typedef {import("./api.js").ModelInfo} ModelInfo */

export class Terminal {
  /**
   * Finds its elements in the page (the template must have them) and wires them.
   * @param {PageConfig} config  what the proxy rendered into the page
   */
  constructor(config) {
    this.config = config;
    this.screen = new Scrollback(byId("scrollback", HTMLElement));
    this.transcript = new Transcript({
      screen: this.screen,
      viewer: new ImageViewer(byId("lightbox", HTMLDialogElement)),
      images: new ImageStore(),
      deleteStored: (name) => this.api.deleteImage(name),
    });
    this.states = new ModelStates({
      bar: byId("status", HTMLElement),
      text: byId("status-text", HTMLElement),
      clock: byId("status-clock", HTMLElement),
      live: byId("live", HTMLElement),
    });
    this.api = createApi({ getKey: () => getPref("apiKey") });
    const input = byId("prompt-input", HTMLTextAreaElement);
    this.prompt = new Prompt({
      form: byId("prompt", HTMLFormElement),
      input,
      mirror: byId("prompt-mirror", HTMLElement),
      label: byId("prompt-label", HTMLElement),
      send: byId("send-btn", HTMLButtonElement),
      history: loadHistory(),
      onHistory: saveHistory,
      handlers: {
        submit: (text) => void this.submit(text),
        stop: () => this.stop(),
        clear: () => void this.clearAll(),
      },
    });
    this.uploads = new Uploads({
      input: byId("file-input", HTMLInputElement),
      drop: byId("drop", HTMLElement),
      chip: byId("attachment", HTMLElement),
      paste: input,
      onAttach: (upload) => {
        const use =
          this.info(this.model)?.type === "image"
            ? "your next line edits it"
            : "it goes with your next message (needs a vision model) or /image PROMPT edits it";
        this.screen.print(`attached ${upload.name} (${upload.width}x${upload.height}): ${use}`, "ok");
        this.prompt.focus();
      },
      onRefuse: (message) => {
        this.screen.error(message, { source: "ui" });
        this.prompt.focus();
      },
    });
    byId("attach-btn", HTMLButtonElement).addEventListener("click", () => this.uploads.pick());
    this.speaker = new Speaker({ api: this.api, onError: (err) => this.fail(err) });
    this.microphone = new Microphone({
      button: byId("mic-btn", HTMLButtonElement),
      canStart: () => this.speechModel("stt") !== null || (this.noSpeechModel("stt"), false),
      onRecorded: (audio, filename) => this.transcribeInto(audio, filename),
      onRefused: (message) => this.screen.error(message, { source: "ui" }),
      onState: (on) => {
        if (on) this.screen.print("recording… (let go, or press [mic] again, to stop)", "dim");
      },
    });
    /** Answers are spoken aloud as they stream (/speak, [spk]). */
    this.speaking = false;
    this.speakButton = byId("speak-btn", HTMLButtonElement);
    this.speakButton.addEventListener("click", () => {
      this.speaker.unlock();
      this.setSpeaking(!this.speaking);
    });
    this.setSpeaking(getPref("speak") === "on", false);

    /** @type {ModelInfo[]} */
    this.models = [];
    /** The name of this page's key (GET v1/usage), once known. */
    this.whoami = "";
    /** The model chat goes to. */
    this.model = getPref("model") ?? "";
    /** The request being answered, if any. @type {AbortController | null} */
    this.inflight = null;
    /** @private @type {AbortController | null} */
    this.events = null;
    /** Typing the API key instead of a message. */
    this.askingKey = false;
    /** The state of the /api/events stream ("connected" while events flow). */
    this.eventsStatus = "";
  }

  /** Show the restored transcript, then connect (or ask for the API key first). */
  async start() {
    applyTheme(getPref("theme") ?? "");
    this.screen.print(`homelab-ai ${this.config.version ? `v${this.config.version}` : ""} · one endpoint for every model at home`, "dim");
    this.screen.print("type /help for commands · Enter sends · Esc stops an answer", "dim");
    this.transcript.restore();
    this.updateLabel();
    this.prompt.focus();
    if (this.config.auth_required && !getPref("apiKey")) {
      this.askKey("This proxy needs an API key. Type it below; it is kept in this browser only.");
      return;
    }
    await this.connect();
  }

  /** Load the model list (retrying while the proxy is unreachable), pick a model, follow state events. */
  async connect() {
    this.watchEvents();
    for (let delay = 1000, said = false; ; delay = Math.min(delay * 2, 15000)) {
      try {
        await this.refreshModels();
        if (said) this.screen.print("the proxy answers again", "ok");
        break;
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 0) return void this.fail(err);
        if (!said) this.screen.print(`${err.message}; trying again…`, "warn");
        said = true;
        await sleep(delay);
      }
    }
    const names = this.models.map((m) => m.id);
    if (!names.includes(this.model)) {
      const stored = this.model;
      const pick =
        (this.config.default_model && names.includes(this.config.default_model) && this.config.default_model) ||
        this.models.find((m) => m.type === "text")?.id ||
        names[0] ||
        "";
      if (stored && pick) this.screen.print(`model '${stored}' is gone from models.json; using ${pick}`, "warn");
      this.setModel(pick);
    } else {
      this.setModel(this.model);
    }
    if (!names.length) this.screen.print("the proxy lists no models: check models.json on the manager", "warn");
    void this.sayWho();
    void this.resumeImageJobs();
  }

  /** Say whose key this page uses (GET v1/usage), once connected. */
  async sayWho() {
    try {
      const { key } = await this.api.usage();
      this.whoami = key.name;
      this.screen.print(`signed in as ${key.name}${key.admin ? " (admin)" : ""} · /usage shows what you used`, "dim");
    } catch {
      // an older proxy without v1/usage: say nothing
    }
  }

  /** Pictures still being made when the page was closed or reloaded: pick them up. */
  async resumeImageJobs() {
    for (const job of imageJobs.pending()) {
      if (this.inflight) return;
      this.screen.print(`picking up the picture "${job.prompt}" (${job.model}) started before the reload`, "dim");
      await this.guarded((controller) => followImageJob(this, job, controller));
    }
  }

  /** (Re)start following api/events with the current key. */
  watchEvents() {
    this.events?.abort();
    const controller = new AbortController();
    this.events = controller;
    void this.api.watchEvents({
      signal: controller.signal,
      onEvent: (ev) => this.states.apply(ev),
      onStatus: (status) => {
        this.eventsStatus = status;
        this.states.connection(status);
      },
    });
  }

  /**
   * Fetch the model list and their states from the proxy.
   * @returns {Promise<ModelInfo[]>}
   * @throws {ApiError} when the proxy does not answer with the list.
   */
  async refreshModels() {
    this.models = await this.api.listModels();
    this.states.apply({ event: "snapshot", data: this.models });
    return this.models;
  }

  /**
   * @param {string} name
   * @returns {ModelInfo | undefined}  from the last model list
   */
  info(name) {
    return this.models.find((m) => m.id === name);
  }

  /**
   * Make `name` the model chat goes to (kept in this browser).
   * @param {string} name
   */
  setModel(name) {
    this.model = name;
    if (name) setPref("model", name);
    this.states.setCurrent(name);
    this.updateLabel();
  }

  /** The prompt names the current model (or asks for the key). */
  updateLabel() {
    this.prompt.setLabel(this.askingKey ? "key>" : `${this.model || "?"}>`);
    const type = this.info(this.model)?.type;
    document.documentElement.dataset.modelType = type ?? "";
  }

  /**
   * The image model /image uses: the current one if it is an image model, else the first.
   * @returns {Promise<string | null>}
   */
  async imageModel() {
    if (this.info(this.model)?.type === "image") return this.model;
    if (!this.models.length) await this.refreshModels();
    return this.models.find((m) => m.type === "image")?.id ?? null;
  }

  // ── speech ───────────────────────────────────────────────────────────────

  /**
   * The speech model for `type`: the current model if it has that type, else the first one.
   * @param {"stt" | "tts"} type
   * @returns {string | null}
   */
  speechModel(type) {
    if (this.info(this.model)?.type === type) return this.model;
    return this.models.find((m) => m.type === type)?.id ?? null;
  }

  /**
   * Say that no model of `type` is configured.
   * @param {"stt" | "tts"} type
   */
  noSpeechModel(type) {
    const what = type === "stt" ? "speech-to-text (stt)" : "text-to-speech (tts)";
    this.screen.error(`no ${what} model is configured: add one with "type": "${type}" to models.json on the manager`, { source: "ui" });
  }

  /**
   * Speak answers aloud as they stream (kept in this browser).
   * @param {boolean} on
   * @param {boolean} [say]  print the change
   */
  setSpeaking(on, say = true) {
    if (on && say && !this.speechModel("tts")) {
      this.noSpeechModel("tts");
      on = false;
    }
    this.speaking = on;
    setPref("speak", on ? "on" : null);
    this.speakButton.setAttribute("aria-pressed", String(on));
    this.speakButton.classList.toggle("on", on);
    if (!on) this.speaker.stop();
    if (say) this.screen.print(on ? "answers are spoken aloud as they come (/speak off stops)" : "answers are not spoken", "ok");
  }

  /**
   * A recording from the microphone: transcribed, and put into the prompt.
   * @param {Blob} audio
   * @param {string} filename
   */
  async transcribeInto(audio, filename) {
    const model = this.speechModel("stt");
    if (!model) return void this.noSpeechModel("stt");
    const pending = this.screen.pending(`${model} · listening to ${(audio.size / 1024).toFixed(0)} KiB`);
    try {
      const text = (await this.api.transcribe({ model, audio, filename })).trim();
      if (!text) this.screen.print("(nothing was heard)", "dim");
      else {
        const before = this.prompt.input.value;
        this.prompt.setValue(before && !/\s$/.test(before) ? `${before} ${text}` : before + text);
      }
    } catch (err) {
      this.fail(err);
    } finally {
      pending.done();
      this.prompt.focus();
    }
  }

  // ── input ────────────────────────────────────────────────────────────────

  /**
   * Run a line from the prompt: the API key, a command, or a message for the current model.
   * @param {string} text
   */
  async submit(text) {
    this.speaker.unlock(); // a key press or a click: the page may make sound from now on
    if (this.askingKey) {
      await this.takeKey(text.trim());
      return;
    }
    const parsed = parseInput(text);
    if (parsed.kind === "empty") return;
    if (this.inflight) {
      this.screen.print("still answering: Esc stops it", "warn");
      this.prompt.setValue(text);
      return;
    }
    if (parsed.kind === "command") {
      const command = findCommand(parsed.name);
      if (command?.echoes !== false) this.screen.user(this.model || "?", text.trim());
      try {
        if (command) await command.run(this, parsed.args, parsed.name);
        else this.screen.error(unknownCommand(parsed.name), { source: "ui" });
      } catch (err) {
        this.fail(err);
      }
      return;
    }
    const type = this.info(this.model)?.type ?? this.states.get(this.model)?.type;
    if (!this.model) {
      this.screen.user("?", parsed.text);
      this.screen.error("no model selected: /models lists them, /model NAME picks one", { source: "ui" });
    } else if (type === "image") {
      await runImage(this, this.model, { prompt: parsed.text });
    } else {
      await runChat(this, parsed.text);
    }
  }

  // ── the request in flight ────────────────────────────────────────────────

  /**
   * A request starts: the prompt turns into [stop], Esc aborts the returned controller.
   * @returns {AbortController}
   */
  begin() {
    const controller = new AbortController();
    this.inflight = controller;
    this.prompt.setBusy(true);
    return controller;
  }

  /**
   * The request that `begin` returned `controller` for is over.
   * @param {AbortController} controller
   */
  end(controller) {
    if (this.inflight === controller) this.inflight = null;
    this.prompt.setBusy(false);
  }

  /**
   * Run `work` as the request in flight (Esc aborts it); print "stopped" or the failure.
   * @param {(controller: AbortController) => Promise<void>} work
   */
  async guarded(work) {
    const controller = this.begin();
    try {
      await work(controller);
    } catch (err) {
      if (isAbort(err)) this.screen.print("^C stopped", "dim");
      else this.fail(err, true);
    } finally {
      this.end(controller);
    }
  }

  /** Stop the request in flight, if any. */
  stop() {
    this.inflight?.abort();
    this.speaker.stop();
  }

  /**
   * Print an error; a refused key sends the user back to the key prompt.
   * @param {unknown} err
   * @param {boolean} [keep]  also keep it in the transcript (a failed request)
   */
  fail(err, keep = false) {
    if (err instanceof ApiError) {
      this.screen.error(err.message, { source: err.source, status: err.status });
      if (keep && err.status !== 401) this.transcript.record({ id: newId(), t: "error", text: err.message });
      if (err.status === 401) {
        setPref("apiKey", null);
        this.askKey("The proxy refused the API key. Type a valid one.");
      }
    } else {
      const message = err instanceof Error ? err.message : String(err);
      this.screen.error(message, { source: "ui" });
    }
  }

  /** /clear (and Ctrl+L): stop any answer, start a new conversation. */
  async clearAll() {
    this.stop();
    await this.transcript.clear();
  }

  // ── API key ──────────────────────────────────────────────────────────────

  /**
   * Take the next line as the API key (typed masked).
   * @param {string} why
   */
  askKey(why) {
    this.askingKey = true;
    this.screen.print(why, "warn");
    if (getPref("apiKey")) this.screen.print("(an empty line keeps the current key)", "dim");
    this.prompt.setMasked(true);
    this.updateLabel();
    this.prompt.focus();
  }

  /**
   * Check a typed key against the proxy, keep it, and connect.
   * @param {string} key
   */
  async takeKey(key) {
    if (!key) {
      if (getPref("apiKey") || !this.config.auth_required) {
        this.askingKey = false;
        this.prompt.setMasked(false);
        this.updateLabel();
        this.screen.print("key unchanged", "dim");
      }
      return;
    }
    if (/\s/.test(key) || key.length > 512) {
      this.screen.error("an API key is one word, no spaces", { source: "ui" });
      return;
    }
    setPref("apiKey", key);
    this.askingKey = false;
    this.prompt.setMasked(false);
    this.updateLabel();
    this.screen.print(`key> ${"*".repeat(Math.min(key.length, 12))}`, "dim");
    try {
      await this.api.listModels();
    } catch (err) {
      this.fail(err);
      return;
    }
    this.screen.print("key accepted and kept in this browser (/key forget removes it)", "ok");
    await this.connect();
  }
}
