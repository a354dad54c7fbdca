// @ts-check
/**
 * The terminal: wires the page's elements to the prompt, the scrollback, the
 * model states and the API, and runs what the user types. All state lives in
 * the `Terminal` instance made at start-up; nothing is put on `window`.
 */

import { ApiError, createApi, isAbort, sleep } from "./api.js";
import { COMMANDS, KEYS, closest, parseImageArgs, parseInput, parseSet } from "./commands.js";
import { buildMessages } from "./conversation.js";
import { byId, clear, h } from "./dom.js";
import { ImageViewer, blobToDataUrl, readUpload } from "./images.js";
import * as imageJobs from "./imagejobs.js";
import { Prompt } from "./prompt.js";
import { ModelStates } from "./status.js";
import { ImageStore, getPref, loadHistory, loadTranscript, newId, saveHistory, saveTranscript, setPref } from "./store.js";
import { Scrollback } from "./terminal.js";

/** @typedef {{auth_required: boolean, version: string, default_model: string | null}} PageConfig */
/** @typedef {import("./api.js").ModelInfo} ModelInfo */
/** @typedef {import("./store.js").Entry} Entry */
/** @typedef {import("./images.js").Upload} Upload */

const THEMES = ["green", "amber", "white"];

/**
 * The settings the proxy rendered into the page.
 * @returns {PageConfig}
 */
function readConfig() {
  /** @type {any} */
  let raw = {};
  try {
    raw = JSON.parse(document.getElementById("config")?.textContent || "{}") ?? {};
  } catch {
    raw = {};
  }
  return {
    auth_required: raw.auth_required === true,
    version: typeof raw.version === "string" ? raw.version : "",
    default_model: typeof raw.default_model === "string" && raw.default_model ? raw.default_model : null,
  };
}

class Terminal {
  /** @param {PageConfig} config */
  constructor(config) {
    this.config = config;
    this.screen = new Scrollback(byId("scrollback", HTMLElement));
    this.viewer = new ImageViewer(byId("lightbox", HTMLDialogElement));
    this.images = new ImageStore();
    this.states = new ModelStates({
      bar: byId("status", HTMLElement),
      text: byId("status-text", HTMLElement),
      clock: byId("status-clock", HTMLElement),
      live: byId("live", HTMLElement),
    });
    this.api = createApi({ getKey: () => getPref("apiKey") });
    this.prompt = new Prompt({
      form: byId("prompt", HTMLFormElement),
      input: byId("prompt-input", HTMLTextAreaElement),
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
    this.fileInput = byId("file-input", HTMLInputElement);
    this.chip = byId("attachment", HTMLElement);

    /** @type {Entry[]} */
    this.entries = loadTranscript();
    /** @type {ModelInfo[]} */
    this.models = [];
    /** The model chat goes to. */
    this.model = getPref("model") ?? "";
    /** @type {Upload | null} */
    this.attachment = null;
    /** The request being answered, if any. @type {AbortController | null} */
    this.inflight = null;
    /** @type {AbortController | null} */
    this.events = null;
    /** Typing the API key instead of a message. */
    this.askingKey = false;
    this.eventsStatus = "";

    this.wireUploads();
    byId("attach-btn", HTMLButtonElement).addEventListener("click", () => this.fileInput.click());
  }

  /** Show the restored transcript, then connect. */
  async start() {
    this.applyTheme(getPref("theme") ?? "green");
    this.screen.print(`homelab-ai ${this.config.version ? `v${this.config.version}` : ""} · one endpoint for every model at home`, "dim");
    this.screen.print("type /help for commands · Enter sends · Esc stops an answer", "dim");
    // Pictures of lines that fell off the end of the kept transcript are deleted.
    void this.images.prune(this.imageIds());
    if (this.entries.length) {
      for (const entry of this.entries) this.render(entry);
      this.screen.print(`── restored ${this.entries.length} line${this.entries.length === 1 ? "" : "s"} from this browser (/clear starts over) ──`, "dim");
      this.screen.toEnd();
    }
    this.updateLabel();
    this.prompt.focus();
    if (this.config.auth_required && !getPref("apiKey")) {
      this.askKey("This proxy needs an API key. Type it below; it is kept in this browser only.");
      return;
    }
    await this.connect();
  }

  /** Load the model list, pick a model, follow state events. */
  async connect() {
    this.watchEvents();
    // An unreachable proxy (restarting, or the network is down) is retried until it answers.
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
    void this.resumeImageJobs();
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

  /** @returns {Promise<ModelInfo[]>} */
  async refreshModels() {
    this.models = await this.api.listModels();
    this.states.apply({ event: "snapshot", data: this.models });
    return this.models;
  }

  /**
   * @param {string} name
   * @returns {ModelInfo | undefined}
   */
  info(name) {
    return this.models.find((m) => m.id === name);
  }

  /** @param {string} name */
  setModel(name) {
    this.model = name;
    if (name) setPref("model", name);
    this.states.setCurrent(name);
    this.updateLabel();
  }

  updateLabel() {
    this.prompt.setLabel(this.askingKey ? "key>" : `${this.model || "?"}>`);
    const type = this.info(this.model)?.type;
    document.documentElement.dataset.modelType = type ?? "";
  }

  /** @param {string} name */
  applyTheme(name) {
    document.documentElement.dataset.theme = THEMES.includes(name) ? name : "green";
  }

  // ── input ────────────────────────────────────────────────────────────────

  /** @param {string} text */
  async submit(text) {
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
      // /image echoes itself, as the prompt of the image it makes.
      if (parsed.name !== "image" && parsed.name !== "img") this.screen.user(this.model || "?", text.trim());
      try {
        await this.command(parsed.name, parsed.args);
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
      await this.runImage(this.model, { prompt: parsed.text });
    } else {
      await this.runChat(parsed.text);
    }
  }

  /**
   * @param {string} name
   * @param {string} args
   */
  async command(name, args) {
    switch (name) {
      case "help":
        return this.help();
      case "models":
        return this.listModels();
      case "model":
        return this.switchModel(args);
      case "image":
      case "img": {
        const parsed = parseImageArgs(args);
        const model = "error" in parsed ? null : await this.imageModel();
        if ("error" in parsed || !model) {
          this.screen.user(this.model || "?", `/${name} ${args}`.trim());
          if ("error" in parsed) this.screen.error(parsed.error, { source: "ui" });
          else this.screen.error("no image model is configured in models.json", { source: "ui" });
          return;
        }
        await this.runImage(model, parsed);
        return;
      }
      case "attach":
      case "upload":
        return this.fileInput.click();
      case "detach":
        this.setAttachment(null);
        return void this.screen.print("attachment dropped", "dim");
      case "set":
        return this.setOption(args);
      case "clear":
      case "cls":
        return this.clearAll();
      case "key":
        if (args === "forget") {
          setPref("apiKey", null);
          this.screen.print("the stored API key is forgotten", "ok");
          if (this.config.auth_required) this.askKey("Type a new API key to go on.");
          return;
        }
        return this.askKey("Type the API key (kept in this browser's local storage).");
      case "theme":
        if (!THEMES.includes(args)) return void this.screen.error(`themes: ${THEMES.join(", ")}`, { source: "ui" });
        setPref("theme", args);
        this.applyTheme(args);
        return void this.screen.print(`phosphor: ${args}`, "ok");
      default: {
        const known = COMMANDS.map((c) => c.usage.split(" ")[0].slice(1));
        const near = closest(name, known);
        this.screen.error(
          `unknown command /${name}${near.length ? ` (did you mean /${near[0]}?)` : ""} · /help lists the commands`,
          { source: "ui" },
        );
      }
    }
  }

  help() {
    const table = h("table", { class: "help" });
    const row = (/** @type {string} */ a, /** @type {string} */ b) =>
      table.appendChild(h("tr", {}, h("td", { class: "usage", text: a }), h("td", { text: b })));
    for (const c of COMMANDS) row(c.usage, c.summary);
    table.appendChild(h("tr", { class: "gap" }, h("td", { colspan: 2 })));
    for (const k of KEYS) row(k.usage, k.summary);
    this.screen.add(
      h(
        "div",
        { class: "entry info" },
        h("div", { class: "line", text: "Chat with a text model; with an image model, what you type is the picture's prompt." }),
        h("div", { class: "line dim", text: "Attach an image ([+img], drop or paste) to edit it or to show it to a vision model." }),
        table,
      ),
    );
  }

  /** Chat options sent with every message, kept in this browser. @returns {Record<string, number>} */
  options() {
    try {
      const raw = JSON.parse(getPref("options") ?? "{}");
      return raw && typeof raw === "object" && !Array.isArray(raw) ? raw : {};
    } catch {
      return {};
    }
  }

  /** @param {string} args */
  setOption(args) {
    const parsed = parseSet(args);
    if ("error" in parsed) return void this.screen.error(parsed.error, { source: "ui" });
    const options = this.options();
    if ("name" in parsed) {
      if (parsed.value === null) delete options[parsed.name];
      else options[parsed.name] = parsed.value;
      setPref("options", JSON.stringify(options));
    }
    const shown = Object.entries(options).map(([k, v]) => `${k}=${v}`);
    this.screen.print(shown.length ? `chat options: ${shown.join(" ")}` : "chat options: the model's defaults", "ok");
  }

  async listModels() {
    const models = await this.refreshModels();
    if (!models.length) return void this.screen.print("no models are configured", "warn");
    const table = h(
      "table",
      { class: "models" },
      h("thead", {}, h("tr", {}, ...["", "model", "type", "state", "about"].map((t) => h("th", { scope: "col", class: t, text: t })))),
    );
    const body = table.appendChild(h("tbody"));
    for (const m of models) {
      const current = m.id === this.model;
      const about = [
        m.description ?? "",
        m.type === "image" && m.sizes?.length ? `sizes ${m.sizes.join(" ")}` : "",
        m.state === "failed" && m.last_error ? m.last_error : "",
      ].filter(Boolean);
      body.appendChild(
        h(
          "tr",
          { class: current ? "current" : "", "data-model": m.id },
          h("td", { text: current ? "*" : "" }),
          h("td", { class: "name", text: m.id }),
          h("td", { text: m.type }),
          h("td", { class: `state ${m.state}`, text: m.state }),
          h("td", { class: "about", text: about.join(" · ") }),
        ),
      );
    }
    this.screen.add(h("div", { class: "entry info" }, table));
  }

  /** @param {string} name */
  async switchModel(name) {
    if (!name) {
      return void this.screen.print(
        this.model ? `current model: ${this.model} · /model NAME switches · /models lists them` : "no model selected",
        "info",
      );
    }
    await this.refreshModels();
    const info = this.info(name);
    if (!info) {
      const names = this.models.map((m) => m.id);
      const near = closest(name, names);
      this.screen.error(
        `unknown model '${name}'${near.length ? ` (did you mean ${near.join(", ")}?)` : ""} · known: ${names.join(", ") || "none"}`,
        { source: "ui" },
      );
      return;
    }
    this.setModel(info.id);
    const how = info.type === "image" ? "image model: what you type becomes the picture's prompt" : "text model";
    const when = info.state === "ready" ? "ready" : `${info.state}, it loads on the first request`;
    this.screen.print(`switched to ${info.id} (${how}; ${when})`, "ok");
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

  // ── requests ─────────────────────────────────────────────────────────────

  /**
   * Show "waiting for MODEL", updated with the model's loading/swapping state
   * (from events, or from polling /v1/models when events are not flowing).
   * @param {string} model
   * @param {string} doing  e.g. "thinking", "painting"
   */
  waitFor(model, doing) {
    const pending = this.screen.pending(`${model} · ${doing}`);
    const update = () => {
      const s = this.states.get(model);
      const act = this.states.activity();
      if (act && (act.model === model || act.phase === "swapping")) pending.set(`${act.text} · then ${doing}`);
      else if (s?.state === "starting") pending.set(`loading ${model} · then ${doing}`);
      else pending.set(`${model} · ${doing}`);
    };
    update();
    const unsubscribe = this.states.subscribe(update);
    const poll = setInterval(() => {
      if (this.eventsStatus !== "connected") this.refreshModels().catch(() => {});
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
   * Send a chat message and stream the answer.
   * @param {string} text
   */
  async runChat(text) {
    const model = this.model;
    const attachment = this.takeAttachment();
    /** @type {import("./store.js").UserEntry} */
    const entry = { id: newId(), t: "user", text, model, mode: "chat" };
    if (attachment) {
      entry.image = { id: newId(), name: attachment.name };
      await this.images.put(entry.image.id, attachment.blob);
    }
    this.record(entry);
    this.render(entry);
    const imageUrl = attachment ? await blobToDataUrl(attachment.blob) : null;
    const messages = buildMessages(this.entries, imageUrl);

    const controller = this.begin();
    const wait = this.waitFor(model, "thinking");
    /** @type {import("./terminal.js").StreamingAnswer | null} */
    let answer = null;
    let stopped = false;
    let failed = false;
    /** @type {string | null} */
    let finish = null;
    try {
      finish = await this.api.chatStream({
        model,
        messages,
        options: this.options(),
        signal: controller.signal,
        onDelta: (piece) => {
          if (!answer) {
            wait.done();
            answer = this.screen.stream(model);
          }
          answer.append(piece);
        },
      });
    } catch (err) {
      if (isAbort(err)) stopped = true;
      else {
        failed = true;
        this.fail(err, true);
      }
    } finally {
      wait.done();
      this.end(controller);
    }
    // (a cast: TypeScript cannot see the assignment inside onDelta)
    const done = /** @type {import("./terminal.js").StreamingAnswer | null} */ (answer);
    const truncated = finish === "length";
    if (done) {
      done.finish({ stopped, truncated });
      this.record({ id: newId(), t: "assistant", text: done.text, model, stopped, truncated });
    } else if (stopped) {
      this.screen.print("^C stopped before the first word", "dim");
    } else if (!failed) {
      this.screen.print(`(${model} answered with no text; finish reason: ${finish ?? "none"})`, "dim");
    }
  }

  /**
   * Generate an image, or edit the attached one.
   * @param {string} model
   * @param {{prompt: string, n?: number, size?: string}} req
   */
  async runImage(model, req) {
    const attachment = this.takeAttachment();
    /** @type {import("./store.js").UserEntry} */
    const entry = { id: newId(), t: "user", text: req.prompt, model, mode: "image" };
    if (attachment) {
      entry.image = { id: newId(), name: attachment.name };
      await this.images.put(entry.image.id, attachment.blob);
    }
    this.record(entry);
    this.render(entry);
    if (model !== this.model) this.screen.print(`using image model ${model}`, "dim");

    if (!attachment) {
      // A new picture is a job on the proxy: a reload meanwhile picks it up (imagejobs.js).
      await this.guarded(async (controller) => {
        const taskId = await this.api.startImageJob({ model, prompt: req.prompt, n: req.n, size: req.size, signal: controller.signal });
        const job = { taskId, model, prompt: req.prompt, startedAt: Date.now(), lastEventId: "0" };
        imageJobs.remember(job);
        await this.followImageJob(job, controller);
      });
      return;
    }
    const controller = this.begin();
    const wait = this.waitFor(model, "editing");
    const started = performance.now();
    try {
      const blobs = await this.api.editImage({ model, prompt: req.prompt, image: attachment.blob, filename: attachment.name, n: req.n, size: req.size, signal: controller.signal });
      wait.done();
      await this.showImages(model, req.prompt, blobs, true, (performance.now() - started) / 1000);
    } catch (err) {
      wait.done();
      if (isAbort(err)) this.screen.print("^C stopped", "dim");
      else this.fail(err, true);
    } finally {
      this.end(controller);
    }
  }

  /**
   * Wait for a picture job and show it; Esc cancels the job on the proxy too.
   * @param {import("./imagejobs.js").PendingImage} job
   * @param {AbortController} controller
   */
  async followImageJob(job, controller) {
    const wait = this.waitFor(job.model, "painting");
    const stop = () => void this.api.cancelTask(job.taskId);
    controller.signal.addEventListener("abort", stop);
    try {
      const blobs = await this.api.followImageJob({
        taskId: job.taskId,
        lastEventId: job.lastEventId,
        onEvent: (id) => imageJobs.progress(job.taskId, id),
        signal: controller.signal,
      });
      wait.done();
      await this.showImages(job.model, job.prompt, blobs, false, (Date.now() - job.startedAt) / 1000);
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

  /** Pictures still being made when the page was closed or reloaded: pick them up. */
  async resumeImageJobs() {
    for (const job of imageJobs.pending()) {
      if (this.inflight) return;
      this.screen.print(`picking up the picture "${job.prompt}" (${job.model}) started before the reload`, "dim");
      await this.guarded((controller) => this.followImageJob(job, controller));
    }
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

  /**
   * Store pictures in this browser, record and draw them.
   * @param {string} model
   * @param {string} prompt
   * @param {Blob[]} blobs
   * @param {boolean} edit
   * @param {number} seconds
   */
  async showImages(model, prompt, blobs, edit, seconds) {
    /** @type {import("./store.js").ImageEntry} */
    const result = {
      id: newId(),
      t: "image",
      model,
      prompt,
      images: blobs.map((_, i) => ({ id: newId(), name: `${model}-${i + 1}` })),
      edit,
      seconds: Math.round(seconds * 10) / 10,
    };
    await Promise.all(result.images.map((ref, i) => this.images.put(ref.id, blobs[i])));
    this.record(result);
    this.render(result);
  }

  /** @returns {AbortController} */
  begin() {
    const controller = new AbortController();
    this.inflight = controller;
    this.prompt.setBusy(true);
    return controller;
  }

  /** @param {AbortController} controller */
  end(controller) {
    if (this.inflight === controller) this.inflight = null;
    this.prompt.setBusy(false);
  }

  stop() {
    this.inflight?.abort();
  }

  /**
   * Print an error; a refused key sends the user back to the key prompt.
   * @param {unknown} err
   * @param {boolean} [keep]  also keep it in the transcript (a failed request)
   */
  fail(err, keep = false) {
    if (err instanceof ApiError) {
      this.screen.error(err.message, { source: err.source, status: err.status });
      if (keep && err.status !== 401) this.record({ id: newId(), t: "error", text: err.message });
      if (err.status === 401) {
        setPref("apiKey", null);
        this.askKey("The proxy refused the API key. Type a valid one.");
      }
    } else {
      const message = err instanceof Error ? err.message : String(err);
      this.screen.error(message, { source: "ui" });
    }
  }

  // ── API key ──────────────────────────────────────────────────────────────

  /** @param {string} why */
  askKey(why) {
    this.askingKey = true;
    this.screen.print(why, "warn");
    if (getPref("apiKey")) this.screen.print("(an empty line keeps the current key)", "dim");
    this.prompt.setMasked(true);
    this.updateLabel();
    this.prompt.focus();
  }

  /** @param {string} key */
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

  // ── transcript ───────────────────────────────────────────────────────────

  /** @param {Entry} entry */
  record(entry) {
    this.entries.push(entry);
    saveTranscript(this.entries);
  }

  /**
   * Draw one transcript entry.
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

  /** Ids of every picture the transcript refers to. */
  imageIds() {
    const ids = new Set();
    for (const e of this.entries) {
      if (e.t === "user" && e.image) ids.add(e.image.id);
      if (e.t === "image") for (const ref of e.images) ids.add(ref.id);
    }
    return ids;
  }

  async clearAll() {
    this.stop();
    this.entries = [];
    saveTranscript(this.entries);
    this.viewer.releaseAll();
    this.screen.clear();
    this.screen.print("── new conversation ──", "dim");
    await this.images.prune(new Set());
  }

  // ── uploads ──────────────────────────────────────────────────────────────

  wireUploads() {
    this.fileInput.addEventListener("change", () => {
      const file = this.fileInput.files?.[0];
      this.fileInput.value = "";
      if (file) void this.attach(file);
    });
    const drop = byId("drop", HTMLElement);
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
    byId("prompt-input", HTMLTextAreaElement).addEventListener("paste", (e) => {
      const file = Array.from(e.clipboardData?.files ?? []).find((f) => f.type.startsWith("image/"));
      if (!file) return;
      e.preventDefault();
      void this.attach(file, file.name && file.name !== "image.png" ? file.name : `pasted-${newId()}.png`);
    });
  }

  /**
   * @param {File} file
   * @param {string} [name]
   */
  async attach(file, name) {
    try {
      const upload = await readUpload(file, name);
      this.setAttachment(upload);
      const type = this.info(this.model)?.type;
      const use = type === "image" ? "your next line edits it" : "it goes with your next message (needs a vision model) or /image PROMPT edits it";
      this.screen.print(`attached ${upload.name} (${upload.width}x${upload.height}): ${use}`, "ok");
    } catch (err) {
      this.screen.error(err instanceof Error ? err.message : String(err), { source: "ui" });
    }
    this.prompt.focus();
  }

  /** @param {Upload | null} upload */
  setAttachment(upload) {
    this.attachment = upload;
    const chip = this.chip;
    const old = chip.querySelector("img");
    if (old?.src) URL.revokeObjectURL(old.src);
    clear(chip);
    chip.hidden = !upload;
    if (!upload) return;
    chip.append(
      h("img", { src: URL.createObjectURL(upload.blob), alt: "", class: "chip-thumb" }),
      h("span", { class: "chip-name", text: `${upload.name} ${upload.width}x${upload.height}` }),
      h("button", { type: "button", class: "btn chip-x", "aria-label": "remove the attached image", text: "[x]", onclick: () => this.setAttachment(null) }),
    );
  }

  /** The attachment, handed to one request. */
  takeAttachment() {
    const upload = this.attachment;
    if (upload) this.setAttachment(null);
    return upload;
  }
}

const terminal = new Terminal(readConfig());
// Marks the page as running its script (the browser tests wait for it).
document.documentElement.dataset.ui = "started";
void terminal.start();
