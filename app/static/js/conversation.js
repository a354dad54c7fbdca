// @ts-check
/**
 * The chat context sent with each message, derived from the transcript. Pure.
 *
 * Rules: only chat turns count (image prompts and errors do not); a user turn
 * that got no answer (it failed, or the next line was sent first) is dropped so
 * roles alternate, which many chat templates require; the newest turns are
 * kept up to MAX_TURNS; only the newest message carries its image (vision
 * models often accept one image per prompt), older ones say an image was there.
 */

/** Most messages sent as context (the new one included). */
export const MAX_TURNS = 40;

/**
 * @param {import("./store.js").Entry[]} entries  the transcript, oldest first, ending with the new user entry
 * @param {string | null} imageUrl  data: URL of the new entry's attached image, if any
 * @returns {import("./api.js").ChatMessage[]}
 */
export function buildMessages(entries, imageUrl) {
  /** @type {import("./api.js").ChatMessage[]} */
  const out = [];
  for (const e of entries) {
    if (e.t === "user" && e.mode === "chat") {
      if (out.length && out[out.length - 1].role === "user") out.pop();
      const note = e.image ? `\n[an image was attached: ${e.image.name}]` : "";
      out.push({ role: "user", content: e.text + note });
    } else if (e.t === "assistant" && e.text && out.length && out[out.length - 1].role === "user") {
      out.push({ role: "assistant", content: e.text });
    }
  }
  const last = out[out.length - 1];
  const newest = entries[entries.length - 1];
  if (last && last.role === "user" && newest?.t === "user") {
    last.content = imageUrl
      ? [
          { type: "text", text: newest.text },
          { type: "image_url", image_url: { url: imageUrl } },
        ]
      : newest.text;
  }
  let trimmed = out.slice(-MAX_TURNS);
  // Never start the context with an orphaned assistant turn.
  while (trimmed.length && trimmed[0].role !== "user") trimmed = trimmed.slice(1);
  return trimmed;
}
