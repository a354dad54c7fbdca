// @ts-check
/**
 * Model states as the manager reports them (through the proxy's api/events
 * relay), and the status bar that shows them: which model is loading, that a
 * swap is under way, and for how long; when nothing changes, the chosen model's
 * state and every resident model (several fit the GPU together within its budget),
 * and the models asleep in host memory (the warm tier: they wake in about a second).
 */

import { formatElapsed } from "./dom.js";

/**
 * @typedef {object} ModelState
 * @property {string} state   stopped | starting | ready | stopping | failed |
 *   falling_asleep | sleeping | waking (the warm tier: weights in host memory)
 * @property {string} type    text | image | embedding
 * @property {number} since   local epoch ms when this state began
 * @property {string | null} error
 * @property {string[]} away  several GPU hosts (docs/hosts.md): the model's hosts that are
 *   away (asleep or unreachable) when every one of them is; empty while one answers
 */

/** A server clock further off than this is ignored in favour of the browser's. */
const MAX_SKEW_MS = 10 * 60 * 1000;

/**
 * A server timestamp (ISO string or epoch seconds/ms) as local epoch ms.
 * Falls back to now when it is missing or implausible.
 * @param {unknown} at
 * @returns {number}
 */
export function toLocalTime(at) {
  const now = Date.now();
  let t = NaN;
  if (typeof at === "number") t = at < 1e12 ? at * 1000 : at;
  else if (typeof at === "string" && at) t = /^\d+(\.\d+)?$/.test(at) ? toLocalTime(Number(at)) : Date.parse(at);
  return Number.isFinite(t) && Math.abs(now - t) < MAX_SKEW_MS ? Math.min(t, now) : now;
}

export class ModelStates {
  /**
   * @param {{bar: HTMLElement, text: HTMLElement, clock: HTMLElement, live: HTMLElement}} parts
   *   bar: the status bar (data-phase/data-model are set on it); text/clock: its parts;
   *   live: the events-connection indicator.
   */
  constructor({ bar, text, clock, live }) {
    this.bar = bar;
    this.text = text;
    this.clock = clock;
    this.live = live;
    /** @type {Map<string, ModelState>} */
    this.models = new Map();
    /** @type {{from: string | null, to: string, since: number} | null} */
    this.swap = null;
    /** The model the UI sends to, shown when nothing is changing. */
    this.current = "";
    /** @type {Set<() => void>} */
    this.listeners = new Set();
    this.timer = setInterval(() => this.tick(), 250);
  }

  /**
   * Call `fn` after every change (for "waiting for …" lines).
   * @param {() => void} fn
   * @returns {() => void} unsubscribe
   */
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** @param {string} name */
  setCurrent(name) {
    this.current = name;
    this.render();
  }

  /**
   * Apply one event from api/events (or a /v1/models list as a snapshot).
   * @param {import("./api.js").StateEvent} ev
   */
  apply({ event, data }) {
    if (event === "snapshot" && Array.isArray(data)) {
      const seen = new Set();
      for (const m of data) {
        if (!m || typeof m.id !== "string") continue;
        seen.add(m.id);
        const old = this.models.get(m.id);
        const since = old && old.state === m.state ? old.since : toLocalTime(m.since);
        const hosts = Array.isArray(m.hosts) ? m.hosts : [];
        const awayOn = Array.isArray(m.away_on) ? m.away_on.map(String) : [];
        const away = hosts.length && awayOn.length === hosts.length ? awayOn : [];
        this.models.set(m.id, { state: String(m.state), type: String(m.type ?? old?.type ?? ""), since, error: m.last_error ?? null, away });
      }
      for (const id of [...this.models.keys()]) if (!seen.has(id)) this.models.delete(id);
      if (this.swap && !this.transitional(this.swap.to)) this.swap = null;
    } else if (event === "state" && data && typeof data.model === "string") {
      const old = this.models.get(data.model);
      this.models.set(data.model, {
        state: String(data.state),
        type: old?.type ?? "",
        since: toLocalTime(data.at),
        error: data.error ?? null,
        away: old?.away ?? [],
      });
      if (this.swap && data.model === this.swap.to && !this.transitional(data.model)) this.swap = null;
    } else if (event === "swap" && data && typeof data.to === "string") {
      this.swap = { from: typeof data.from === "string" ? data.from : null, to: data.to, since: toLocalTime(data.at) };
    } else {
      return;
    }
    this.render();
    for (const fn of this.listeners) fn();
  }

  /**
   * @param {string} name
   * @returns {ModelState | undefined}
   */
  get(name) {
    return this.models.get(name);
  }

  /**
   * @private
   * @param {string} name
   */
  transitional(name) {
    const s = this.models.get(name)?.state;
    return s === "starting" || s === "stopping" || s === "falling_asleep" || s === "waking" || s === undefined;
  }

  /**
   * What is happening to the GPU right now, in words, or null when nothing is.
   * @returns {{phase: "swapping" | "loading" | "waking" | "sleeping" | "stopping", model: string, text: string, since: number} | null}
   */
  activity() {
    const coming = (/** @type {string} */ to) =>
      this.models.get(to)?.state === "waking" ? `waking ${to} from host memory` : `loading ${to}`;
    if (this.swap && !this.swap.from) {
      // A start (or wake) that stopped nothing: the model comes beside the residents.
      const waking = this.models.get(this.swap.to)?.state === "waking";
      return { phase: waking ? "waking" : "loading", model: this.swap.to, text: coming(this.swap.to), since: this.swap.since };
    }
    if (this.swap) {
      const from = this.swap.from ? this.models.get(this.swap.from) : undefined;
      const step =
        from && from.state === "stopping"
          ? `stopping ${this.swap.from}`
          : from && from.state === "falling_asleep"
            ? `putting ${this.swap.from} to sleep`
            : coming(this.swap.to);
      const route = `${this.swap.from} → ${this.swap.to}`;
      return { phase: "swapping", model: this.swap.to, text: `swapping ${route} · ${step}`, since: this.swap.since };
    }
    for (const [name, m] of this.models) {
      if (m.state === "starting") return { phase: "loading", model: name, text: `loading ${name}`, since: m.since };
      if (m.state === "waking") return { phase: "waking", model: name, text: coming(name), since: m.since };
    }
    for (const [name, m] of this.models) {
      if (m.state === "falling_asleep")
        return { phase: "sleeping", model: name, text: `putting ${name} to sleep in host memory`, since: m.since };
      if (m.state === "stopping") return { phase: "stopping", model: name, text: `stopping ${name}`, since: m.since };
    }
    return null;
  }

  /**
   * The models that hold (or are taking or giving back) their GPU memory: every state but
   * stopped and sleeping, in the manager's order (not those whose every host is away: their
   * state is the last one known).
   * @returns {string[]}
   */
  residents() {
    return [...this.models]
      .filter(([, m]) => m.state !== "stopped" && m.state !== "sleeping" && !m.away.length)
      .map(([name]) => name);
  }

  /**
   * The models asleep in host memory (the warm tier), in the manager's order.
   * @returns {string[]}
   */
  sleepers() {
    return [...this.models].filter(([, m]) => m.state === "sleeping").map(([name]) => name);
  }

  /**
   * Events connection state, shown as a small indicator.
   * @param {"connected" | "reconnecting" | "unauthorized" | "unavailable"} status
   */
  connection(status) {
    this.live.dataset.status = status;
    this.live.textContent = { connected: "live", reconnecting: "offline", unauthorized: "no key", unavailable: "n/a" }[status];
    this.live.title =
      status === "connected" ? "receiving model state events" : `model state events: ${this.live.textContent}`;
  }

  /** @private */
  render() {
    const act = this.activity();
    if (act) {
      this.bar.dataset.phase = act.phase;
      this.bar.dataset.model = act.model;
      this.bar.dataset.state = "";
      this.text.textContent = act.text;
    } else {
      this.bar.dataset.phase = "idle";
      this.bar.dataset.model = this.current;
      const m = this.models.get(this.current);
      const state = m ? m.state : "unknown";
      const residents = this.residents();
      const sleepers = this.sleepers();
      const loaded =
        (residents.length ? ` · resident: ${residents.join(", ")}` : "") +
        (sleepers.length ? ` · asleep: ${sleepers.join(", ")}` : "");
      const hint = m?.away.length
        ? ` · host ${m.away.join(", ")} away (woken on first use if it sleeps)`
        : m?.state === "stopped"
          ? " (loads on first use)"
          : m?.state === "sleeping"
            ? " in host memory (wakes on first use)"
            : "";
      this.text.textContent = this.current
        ? `${this.current} · ${state}${m?.state === "failed" && m.error ? `: ${m.error}` : ""}${hint}${loaded}`
        : `no model selected${loaded}`;
      this.bar.dataset.state = state;
    }
    this.tick();
  }

  /** @private */
  tick() {
    const act = this.activity();
    const text = act ? formatElapsed(Date.now() - act.since) : "";
    if (this.clock.textContent !== text) this.clock.textContent = text;
  }
}
