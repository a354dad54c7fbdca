// @ts-check
/**
 * What the user typed, parsed: a chat line or a command, `/image` and `/set`
 * arguments, "did you mean". Pure functions: no DOM, no network. The commands
 * themselves are in commands.js.
 */

/**
 * @typedef {{kind: "empty"} | {kind: "chat", text: string} |
 *           {kind: "command", name: string, args: string}} Parsed
 */

/**
 * Split a prompt line into a chat message or a command.
 * "//text" sends "/text" as a chat message.
 * @param {string} input
 * @returns {Parsed}
 */
export function parseInput(input) {
  const text = input.trim();
  if (!text) return { kind: "empty" };
  if (text.startsWith("//")) return { kind: "chat", text: text.slice(1) };
  const match = /^\/([A-Za-z][\w-]*)(?:\s+([\s\S]*))?$/.exec(text);
  if (!match) return { kind: "chat", text };
  return { kind: "command", name: match[1].toLowerCase(), args: (match[2] ?? "").trim() };
}

/**
 * Parse "/image" arguments: optional "-n N" / "--n N" and "-s WxH" / "--size WxH"
 * before the prompt.
 * @param {string} args
 * @returns {{prompt: string, n?: number, size?: string} | {error: string}}
 */
export function parseImageArgs(args) {
  /** @type {{prompt: string, n?: number, size?: string}} */
  const out = { prompt: "" };
  let rest = args.trim();
  for (;;) {
    const m = /^(-n|--n|-s|--size)(?:\s+|=)(\S+)\s*/.exec(rest);
    if (!m) break;
    rest = rest.slice(m[0].length);
    if (m[1] === "-n" || m[1] === "--n") {
      const n = Number(m[2]);
      if (!Number.isInteger(n) || n < 1 || n > 16) return { error: `-n wants a whole number from 1 to 16, not '${m[2]}'` };
      out.n = n;
    } else {
      if (!/^\d{2,5}x\d{2,5}$/.test(m[2])) return { error: `-s wants a size like 1024x1024, not '${m[2]}'` };
      out.size = m[2];
    }
  }
  out.prompt = rest.trim();
  if (!out.prompt) return { error: "usage: /image [-n N] [-s WxH] PROMPT" };
  return out;
}

/**
 * The closest known names to a mistyped one (for "did you mean").
 * @param {string} name
 * @param {string[]} known
 * @returns {string[]}
 */
export function closest(name, known) {
  const lower = name.toLowerCase();
  return known
    .map((k) => ({ k, d: distance(lower, k.toLowerCase()) }))
    .filter(({ k, d }) => d <= Math.max(2, Math.floor(k.length / 3)) || k.toLowerCase().includes(lower))
    .sort((a, b) => a.d - b.d)
    .slice(0, 3)
    .map(({ k }) => k);
}

/**
 * Edit distance counting a swap of neighbours as one edit (optimal string alignment),
 * so "/modle" is closest to "/model".
 * @param {string} a
 * @param {string} b
 */
function distance(a, b) {
  /** @type {number[][]} */
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** Chat request options `/set` accepts, with their allowed ranges. */
export const OPTIONS = {
  max_tokens: { min: 1, max: 131072, integer: true },
  temperature: { min: 0, max: 2, integer: false },
  top_p: { min: 0, max: 1, integer: false },
};

/**
 * Parse "/set NAME [VALUE]".
 * @param {string} args
 * @returns {{list: true} | {name: string, value: number | null} | {error: string}}
 */
export function parseSet(args) {
  const [name, value, ...rest] = args.split(/\s+/).filter(Boolean);
  if (!name) return { list: true };
  const names = Object.keys(OPTIONS);
  if (!Object.hasOwn(OPTIONS, name)) return { error: `/set knows ${names.join(", ")}, not '${name}'` };
  if (rest.length) return { error: "usage: /set NAME [VALUE]" };
  if (value === undefined) return { name, value: null };
  const spec = OPTIONS[/** @type {keyof typeof OPTIONS} */ (name)];
  const number = Number(value);
  if (!Number.isFinite(number) || number < spec.min || number > spec.max || (spec.integer && !Number.isInteger(number))) {
    return { error: `${name} wants ${spec.integer ? "a whole number" : "a number"} from ${spec.min} to ${spec.max}, not '${value}'` };
  }
  return { name, value: number };
}
