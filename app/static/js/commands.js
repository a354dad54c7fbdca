// @ts-check
/**
 * The slash commands, as a table: one entry per command with its names, its
 * usage, the line /help shows for it, and what it does. /help is drawn from
 * this table and the terminal runs a command by looking its name up here, so
 * adding a command is adding an entry. Parsing the arguments is in input.js.
 */

import { h } from "./dom.js";
import { closest, parseImageArgs, parseSet } from "./input.js";
import { runImage } from "./requests.js";
import { loadOptions, saveOptions, setPref } from "./store.js";

/** @typedef {import("./terminal.js").Terminal} Terminal */

/**
 * @typedef {object} Command
 * @property {string[]} names  the first is the command's name; the others are aliases
 * @property {string} usage  how to type it, as /help shows it
 * @property {string} summary  what it does, as /help shows it
 * @property {boolean} [echoes]  false: the command echoes the line itself (default: the terminal does)
 * @property {(t: Terminal, args: string, name: string) => void | Promise<void>} run
 *   `args` is what followed the name, trimmed; `name` is the name as typed (lower case).
 */

/** The phosphor colours /theme offers; the first is the default. */
export const THEMES = ["green", "amber", "white"];

/**
 * Colour the page (an unknown name gives the default).
 * @param {string} name
 */
export function applyTheme(name) {
  document.documentElement.dataset.theme = THEMES.includes(name) ? name : THEMES[0];
}

/** @type {Command[]} */
export const COMMANDS = [
  { names: ["help"], usage: "/help", summary: "this list", run: (t) => help(t) },
  { names: ["models"], usage: "/models", summary: "every model, with its type and state", run: (t) => listModels(t) },
  { names: ["usage"], usage: "/usage [KEY]", summary: "what your key used (an admin key: every key's, or KEY's)", run: (t, args) => usage(t, args) },
  { names: ["whoami"], usage: "/whoami", summary: "your key's name and limits", run: (t) => whoami(t) },
  { names: ["model"], usage: "/model NAME", summary: "switch to NAME (the next request loads it)", run: (t, args) => switchModel(t, args) },
  {
    names: ["image", "img"],
    usage: "/image [-n N] [-s WxH] PROMPT",
    summary: "generate an image (edits the attached image, if any)",
    echoes: false,
    run: (t, args, name) => image(t, args, name),
  },
  { names: ["attach", "upload"], usage: "/attach", summary: "pick an image to attach (or drop / paste one)", run: (t) => t.uploads.pick() },
  {
    names: ["detach"],
    usage: "/detach",
    summary: "drop the attached image",
    run: (t) => {
      t.uploads.set(null);
      t.screen.print("attachment dropped", "dim");
    },
  },
  { names: ["say"], usage: "/say [-v VOICE] TEXT", summary: "speak TEXT aloud (a text-to-speech model)", run: (t, args) => say(t, args) },
  {
    names: ["speak"],
    usage: "/speak [on|off]",
    summary: "speak answers aloud as they are written, sentence by sentence ([spk])",
    run: (t, args) => speak(t, args),
  },
  { names: ["voices"], usage: "/voices [MODEL]", summary: "the voices of a text-to-speech model", run: (t, args) => voices(t, args) },
  {
    names: ["set"],
    usage: "/set [NAME [VALUE]]",
    summary: "chat options: max_tokens, temperature, top_p (no value: reset)",
    run: (t, args) => setOption(t, args),
  },
  { names: ["clear", "cls"], usage: "/clear", summary: "clear the screen and start a new conversation", run: (t) => t.clearAll() },
  { names: ["key"], usage: "/key [forget]", summary: "enter a new API key, or forget the stored one", run: (t, args) => key(t, args) },
  { names: ["theme"], usage: `/theme ${THEMES.join("|")}`, summary: "phosphor colour", run: (t, args) => theme(t, args) },
];

/** The keys /help lists after the commands. */
export const KEYS = [
  { usage: "Enter", summary: "send  (Shift+Enter: new line)" },
  { usage: "Up / Down", summary: "previous / next line from history" },
  { usage: "Esc  or  Ctrl+C", summary: "stop the answer being written" },
  { usage: "Ctrl+L", summary: "same as /clear" },
  { usage: "[mic]", summary: "hold to talk, or press to start and again to stop: the words go into the prompt" },
];

/**
 * The command a name (or alias) stands for.
 * @param {string} name  lower case, without the slash
 * @returns {Command | undefined}
 */
export function findCommand(name) {
  return COMMANDS.find((c) => c.names.includes(name));
}

/**
 * What to say about a command that does not exist, with the nearest name.
 * @param {string} name
 * @returns {string}
 */
export function unknownCommand(name) {
  const near = closest(
    name,
    COMMANDS.map((c) => c.names[0]),
  );
  return `unknown command /${name}${near.length ? ` (did you mean /${near[0]}?)` : ""} · /help lists the commands`;
}

/** @param {Terminal} t */
function help(t) {
  const table = h("table", { class: "help" });
  const row = (/** @type {string} */ a, /** @type {string} */ b) =>
    table.appendChild(h("tr", {}, h("td", { class: "usage", text: a }), h("td", { text: b })));
  for (const c of COMMANDS) row(c.usage, c.summary);
  table.appendChild(h("tr", { class: "gap" }, h("td", { colspan: 2 })));
  for (const k of KEYS) row(k.usage, k.summary);
  t.screen.add(
    h(
      "div",
      { class: "entry info" },
      h("div", { class: "line", text: "Chat with a text model; with an image model, what you type is the picture's prompt." }),
      h("div", { class: "line dim", text: "Attach an image ([+img], drop or paste) to edit it or to show it to a vision model." }),
      table,
    ),
  );
}

/**
 * A key's limits in words.
 * @param {import("./api.js").KeyInfo} k
 */
function limitsText(k) {
  const parts = [
    k.rate ? `${k.rate} requests/min` : "",
    k.concurrency ? `${k.concurrency} at once` : "",
    k.gpu_day ? `${k.gpu_day} GPU-s/day` : "",
    k.gpu_month ? `${k.gpu_month} GPU-s/month` : "",
  ].filter(Boolean);
  return parts.join(" · ") || "no limits";
}

/**
 * /whoami: the key's name, class, models and limits.
 * @param {Terminal} t
 */
async function whoami(t) {
  const { key } = await t.api.usage();
  t.whoami = key.name;
  t.screen.print(
    `you are ${key.name || "(no key)"}${key.admin ? " (admin)" : ""} · class ${key.priority} · models ${key.models.join(", ")} · ${limitsText(key)}`,
    "info",
  );
}

/**
 * /usage: requests, tokens and GPU-seconds per key and model.
 * @param {Terminal} t
 * @param {string} args  a key's name (admins), or nothing
 */
async function usage(t, args) {
  const answer = await t.api.usage(args || undefined);
  const table = h(
    "table",
    { class: "usage" },
    h("thead", {}, h("tr", {}, ...["key", "model", "requests", "prompt", "completion", "GPU-s"].map((c) => h("th", { scope: "col", text: c })))),
  );
  const body = table.appendChild(h("tbody"));
  for (const row of answer.data) {
    for (const m of row.models) {
      body.appendChild(
        h(
          "tr",
          { "data-key": row.key, "data-model": m.model },
          h("td", { class: "name", text: row.key }),
          h("td", { text: m.model }),
          h("td", { text: String(m.requests) }),
          h("td", { text: String(m.prompt_tokens) }),
          h("td", { text: String(m.completion_tokens) }),
          h("td", { text: m.gpu_seconds.toFixed(1) }),
        ),
      );
    }
    const refused = Object.entries(row.refused).map(([why, n]) => `${n} refused (${why})`);
    body.appendChild(
      h(
        "tr",
        { class: "total", "data-key": row.key },
        h("td", { class: "name", text: row.key }),
        h("td", { class: "about", text: `GPU-s today ${row.gpu_seconds_today.toFixed(1)} · this month ${row.gpu_seconds_this_month.toFixed(1)}${refused.length ? ` · ${refused.join(", ")}` : ""}` }),
      ),
    );
  }
  t.screen.print(`usage of ${answer.key.admin && !args ? "every key" : args || answer.key.name} (you are ${answer.key.name}; ${limitsText(answer.key)})`, "info");
  t.screen.add(h("div", { class: "entry info usage" }, table));
}

/**
 * /models: the table of models, fresh from the proxy.
 * @param {Terminal} t
 */
async function listModels(t) {
  const models = await t.refreshModels();
  if (!models.length) return void t.screen.print("no models are configured", "warn");
  const several = models.some((m) => m.hosts?.length);
  const columns = ["", "model", "type", "backend", "state", ...(several ? ["hosts"] : []), "about"];
  const table = h(
    "table",
    { class: "models" },
    h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", { scope: "col", class: c, text: c })))),
  );
  const body = table.appendChild(h("tbody"));
  for (const m of models) {
    const current = m.id === t.model;
    const about = [
      m.description ?? "",
      m.endpoint ? `via ${m.endpoint}` : "",
      m.reachable === false ? "unreachable" : "",
      m.fallbacks?.length ? `then ${m.fallbacks.join(", ")}` : "",
      m.type === "image" && m.sizes?.length ? `sizes ${m.sizes.join(" ")}` : "",
      m.vision ? "vision" : "",
      m.tools ? "tools" : "",
      m.gpu_memory_mib != null
        ? `GPU ${m.gpu_memory_mib} MiB${m.observed_gpu_memory_mib != null ? ` (seen ${m.observed_gpu_memory_mib})` : ""}`
        : "",
      m.pinned ? "pinned" : "",
      warmText(m),
      m.state === "failed" && m.last_error ? m.last_error : "",
    ].filter(Boolean);
    body.appendChild(
      h(
        "tr",
        { class: current ? "current" : "", "data-model": m.id },
        h("td", { text: current ? "*" : "" }),
        h("td", { class: "name", text: m.id }),
        h("td", { class: "type", text: m.type }),
        h("td", { class: "backend", text: m.backend ?? "" }),
        h("td", { class: `state ${m.state}`, text: m.state }),
        ...(several ? [h("td", { class: "hosts", text: hostsText(m) })] : []),
        h("td", { class: "about", text: about.join(" · ") }),
      ),
    );
  }
  t.screen.add(h("div", { class: "entry info models" }, table));
}

/**
 * What the warm tier knows of a model (models.json `warm`): its sleep level, the host memory
 * it holds asleep and how long its wakes and cold starts usually take; "" for a model never
 * kept warm.
 * @param {import("./api.js").ModelInfo} m
 * @returns {string}
 */
export function warmText(m) {
  if (m.warm_level == null) return "";
  const parts = [`sleep level ${m.warm_level}`];
  if (m.host_memory_mib != null) parts.push(`${m.host_memory_mib} MiB of host memory asleep`);
  if (m.wake_seconds != null) parts.push(`wakes in ${seconds(m.wake_seconds)}`);
  if (m.load_seconds != null) parts.push(`cold start ${seconds(m.load_seconds)}`);
  return `warm (${parts.join(", ")})`;
}

/** @param {number} s */
function seconds(s) {
  return s < 10 ? `${s.toFixed(1)} s` : `${Math.round(s)} s`;
}

/**
 * The hosts that serve a model (several GPU hosts, docs/hosts.md): each name, with `*` where
 * it is resident, `~` where it is loading and `(away)` where the host is away.
 * @param {import("./api.js").ModelInfo} m
 * @returns {string}
 */
export function hostsText(m) {
  return (m.hosts ?? [])
    .map((name) => {
      if (m.away_on?.includes(name)) return `${name} (away)`;
      if (m.resident_on?.includes(name)) return `${name}*`;
      if (m.loading_on?.includes(name)) return `${name}~`;
      return name;
    })
    .join(" ");
}

/**
 * /model NAME: switch, with a "did you mean" for a name that does not exist.
 * @param {Terminal} t
 * @param {string} name
 */
async function switchModel(t, name) {
  if (!name) {
    return void t.screen.print(t.model ? `current model: ${t.model} · /model NAME switches · /models lists them` : "no model selected", "info");
  }
  const models = await t.refreshModels();
  const info = t.info(name);
  if (!info) {
    const names = models.map((m) => m.id);
    const near = closest(name, names);
    t.screen.error(`unknown model '${name}'${near.length ? ` (did you mean ${near.join(", ")}?)` : ""} · known: ${names.join(", ") || "none"}`, {
      source: "ui",
    });
    return;
  }
  if (info.type === "stt" || info.type === "tts") {
    const how = info.type === "stt" ? "[mic] records into the prompt with it" : "/say TEXT and /speak use it";
    t.screen.error(`${info.id} is a ${info.type === "stt" ? "speech-to-text" : "text-to-speech"} model, not for chat: ${how}`, { source: "ui" });
    return;
  }
  if (info.type === "embedding") {
    t.screen.error(`${info.id} is an embedding model: it answers /v1/embeddings (and the MCP tool embed), not chat or pictures`, { source: "ui" });
    return;
  }
  t.setModel(info.id);
  const how = info.type === "image" ? "image model: what you type becomes the picture's prompt" : "text model";
  const when =
    info.state === "ready"
      ? "ready"
      : info.state === "sleeping"
        ? "sleeping in host memory, it wakes on the first request"
        : `${info.state}, it loads on the first request`;
  t.screen.print(`switched to ${info.id} (${how}; ${when})`, "ok");
}

/**
 * /image: the current model if it is an image model, else the first one.
 * @param {Terminal} t
 * @param {string} args
 * @param {string} name  as typed (/image or /img), for the echo of a refused line
 */
async function image(t, args, name) {
  const parsed = parseImageArgs(args);
  const model = "error" in parsed ? null : await t.imageModel();
  if ("error" in parsed || !model) {
    t.screen.user(t.model || "?", `/${name} ${args}`.trim());
    if ("error" in parsed) t.screen.error(parsed.error, { source: "ui" });
    else t.screen.error("no image model is configured in models.json", { source: "ui" });
    return;
  }
  await runImage(t, model, parsed);
}

/**
 * /set: change, reset or list the chat options.
 * @param {Terminal} t
 * @param {string} args
 */
function setOption(t, args) {
  const parsed = parseSet(args);
  if ("error" in parsed) return void t.screen.error(parsed.error, { source: "ui" });
  const options = loadOptions();
  if ("name" in parsed) {
    if (parsed.value === null) delete options[parsed.name];
    else options[parsed.name] = parsed.value;
    saveOptions(options);
  }
  const shown = Object.entries(options).map(([k, v]) => `${k}=${v}`);
  t.screen.print(shown.length ? `chat options: ${shown.join(" ")}` : "chat options: the model's defaults", "ok");
}

/**
 * /key: type a new API key; /key forget: drop the stored one.
 * @param {Terminal} t
 * @param {string} args
 */
function key(t, args) {
  if (args === "forget") {
    setPref("apiKey", null);
    t.screen.print("the stored API key is forgotten", "ok");
    if (t.config.auth_required) t.askKey("Type a new API key to go on.");
    return;
  }
  t.askKey("Type the API key (kept in this browser's local storage).");
}

/**
 * /theme NAME: the phosphor colour, kept in this browser.
 * @param {Terminal} t
 * @param {string} name
 */
function theme(t, name) {
  if (!THEMES.includes(name)) return void t.screen.error(`themes: ${THEMES.join(", ")}`, { source: "ui" });
  setPref("theme", name);
  applyTheme(name);
  t.screen.print(`phosphor: ${name}`, "ok");
}


/**
 * /say [-v VOICE] TEXT: speak TEXT with the text-to-speech model.
 * @param {Terminal} t
 * @param {string} args
 */
async function say(t, args) {
  const match = /^(?:-v\s+(\S+)\s+)?([\s\S]*)$/.exec(args);
  const voice = match?.[1];
  const text = match?.[2].trim() ?? "";
  if (!text) return void t.screen.error("/say needs a text: /say [-v VOICE] TEXT", { source: "ui" });
  if (!t.models.length) await t.refreshModels();
  const model = t.speechModel("tts");
  if (!model) return void t.noSpeechModel("tts");
  const pending = t.screen.pending(`${model} · speaking`);
  try {
    const seconds = await t.speaker.say(model, text, voice);
    t.screen.print(`♪ ${model}${voice ? ` (${voice})` : ""}: ${seconds.toFixed(1)} s`, "dim");
  } catch {
    // reported by the speaker (or stopped)
  } finally {
    pending.done();
  }
}

/**
 * /speak [on|off]: speak answers aloud as they stream (no argument: toggle).
 * @param {Terminal} t
 * @param {string} args
 */
async function speak(t, args) {
  if (args && args !== "on" && args !== "off") return void t.screen.error("/speak on, or /speak off", { source: "ui" });
  if (!t.models.length) await t.refreshModels();
  t.setSpeaking(args ? args === "on" : !t.speaking);
}

/**
 * /voices [MODEL]: the voices of a text-to-speech model.
 * @param {Terminal} t
 * @param {string} args
 */
async function voices(t, args) {
  if (!t.models.length) await t.refreshModels();
  const model = args || t.speechModel("tts");
  if (!model) return void t.noSpeechModel("tts");
  const list = await t.api.voices(model);
  if (!list.length) return void t.screen.print(`${model} lists no voices`, "warn");
  const table = h(
    "table",
    { class: "voices" },
    h("thead", {}, h("tr", {}, ...["voice", "name", "language", "rate"].map((c) => h("th", { scope: "col", text: c })))),
  );
  const body = table.appendChild(h("tbody"));
  for (const v of list) {
    body.appendChild(
      h(
        "tr",
        { "data-voice": v.id },
        h("td", { class: "name", text: v.id }),
        h("td", { text: v.name }),
        h("td", { text: v.language }),
        h("td", { text: `${v.sample_rate} Hz` }),
      ),
    );
  }
  t.screen.print(`voices of ${model} (/say -v VOICE TEXT)`, "info");
  t.screen.add(h("div", { class: "entry info voices" }, table));
}
