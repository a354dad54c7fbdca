// @ts-check
/**
 * The page's entry point: reads the settings the proxy rendered into the page,
 * makes the one `Terminal` (terminal.js) and starts it.
 */

import { Terminal } from "./terminal.js";

/**
 * The settings the proxy rendered into the page (`<script type="application/json" id="config">`);
 * anything missing or malformed gets its default.
 * @returns {import("./terminal.js").PageConfig}
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

const terminal = new Terminal(readConfig());
// Marks the page as running its script (the browser tests wait for it).
document.documentElement.dataset.ui = "started";
void terminal.start();
