// Shows on each LoRA Bridge node what it did in its last run: one read-only line per LoRA
// (applied or skipped, base model, rank, matched keys, strengths, trigger words), warnings
// standing out; on Load LoRA File, the picked file's base model, rank and trigger words before
// any run, and each file's base model beside its name in the drop-down, files made for another
// base model than the connected one marked. The result lives with the node, never in the saved workflow: after a tab switch
// or a reload it is read back from the pod's own history (the newest run of that node), and it
// is marked stale when a run fails or the node's inputs are not those of the run it shows.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { describe, infoLines, loraFiles, loraInfo, misfit, modelFeeding } from "./lora_bridge_files.js";
import { isPackNode, nodeRoles } from "./lora_bridge_nodes.js";
import { grow } from "./lora_bridge_widgets.js";

const PANEL = "lora_bridge_result";
const KEY = "lora_bridge"; // the nodes' UI output
const WARNING = /\bskipped\b|apply anyway|\bdropped\b|not found|mismatch|\berror\b|\b0\/\d+ keys/i;
const HISTORY_ITEMS = 64;
const HISTORY_WAITS = 20;
let ids = {}; // the pack's node ids by role (lora_bridge_nodes.js)

function isOurs(node) {
  return isPackNode(ids, node?.type);
}

function contentHeight(element) {
  return [...element.children].reduce((sum, row) => sum + row.offsetHeight, 0);
}

function panelOf(node) {
  let widget = node.widgets?.find((w) => w.name === PANEL);
  if (widget) return widget;
  const element = document.createElement("div");
  element.className = "lora-bridge-result";
  element.style.cssText = "font: 11px/1.35 monospace; white-space: pre-wrap; overflow-wrap: anywhere; overflow-y: auto;" +
    "padding: 4px 6px; border-radius: 4px; background: rgba(0,0,0,0.3); color: var(--input-text, #ddd); user-select: text;";
  widget = node.addDOMWidget(PANEL, "lora_bridge_result", element, {
    serialize: false, hideOnZoom: false, getValue: () => undefined, setValue: () => {},
    getMinHeight: () => contentHeight(element) + 28, // every line in view (+ padding and the widget's margins)
  });
  widget.serialize = false; // never in workflows or prompts
  return widget;
}

// state: {lines: string[], stale: string | null}
function show(node, state) {
  node.loraBridgeResult = state;
  render(node);
}

function row(text, className, style = {}) {
  const line = document.createElement("div");
  line.textContent = text;
  line.className = className;
  Object.assign(line.style, style);
  return line;
}

// The panel: the picked file's info (Load LoRA File), then the stale note and the last run's lines.
function render(node) {
  const state = node.loraBridgeResult ?? { lines: [], stale: null };
  const rows = state.lines.map((text) => WARNING.test(text)
    ? row(text, "lora-bridge-warning", { color: "#f0b429", fontWeight: "bold" }) : row(text, ""));
  if (state.stale) rows.unshift(row(`stale: ${state.stale}`, "lora-bridge-stale", { color: "#ff7b72" }));
  rows.unshift(...(node.loraBridgeDetails ?? []).map((text) => row(text, "lora-bridge-detail", { color: "#aaa" })));
  const info = node.loraBridgeInfo;
  if (info) rows.unshift(row(info.text, info.warning ? "lora-bridge-info lora-bridge-warning" : "lora-bridge-info",
    info.warning ? { color: "#f0b429", fontWeight: "bold" } : { color: "#8ab4f8" }));
  if (!rows.length) return;
  const panel = panelOf(node);
  panel.element.replaceChildren(...rows);
  panel.element.dataset.stale = state.stale ? "true" : "false";
  panel.element.style.opacity = state.stale ? "0.6" : "1";
  panel.rows ??= new ResizeObserver(() => grow(node)); // rows are measured once the editor lays them out
  panel.rows.disconnect();
  rows.forEach((line) => panel.rows.observe(line));
  node.setDirtyCanvas(true, true);
}

// -- Load LoRA File: each file's base model, rank and trigger words, from the pack's own inspection;
// files made for another base model than the one the LoRA goes into are marked --

async function describeFile(node) {
  const widget = node.widgets?.find((w) => w.name === "lora_name");
  if (!widget) return;
  const ticket = node.loraBridgeTicket = (node.loraBridgeTicket ?? 0) + 1; // only the newest answer is shown
  try {
    const { byName, model } = await loraFiles(modelFeeding(node));
    if (ticket !== node.loraBridgeTicket) return;
    widget.options.getOptionLabel = (value) => (byName.has(value) ? `${value}  [${describe(byName.get(value), model)}]`
      : String(value ?? ""));
    const file = byName.get(widget.value);
    node.loraBridgeInfo = file ? { text: describe(file, model), warning: Boolean(misfit(file, model)) }
      : { text: `${widget.value}: not in the loras folders`, warning: true };
  } catch (error) {
    if (ticket !== node.loraBridgeTicket) return;
    node.loraBridgeInfo = { text: `file info unavailable: ${error.message}`, warning: true };
  }
  render(node);
}

// The picked file inspected whole (hash, metadata), under its info line; a second click hides it.
async function toggleDetails(node) {
  const name = node.widgets?.find((w) => w.name === "lora_name")?.value;
  if (node.loraBridgeDetails || !name) {
    node.loraBridgeDetails = null;
  } else {
    node.loraBridgeDetails = ["reading the whole file…"];
    render(node);
    try {
      node.loraBridgeDetails = infoLines(await loraInfo(name));
    } catch (error) {
      node.loraBridgeDetails = [`no details: ${error.message}`];
    }
  }
  render(node);
}

function markStale(node, why) {
  if (node.loraBridgeResult?.lines.length && !node.loraBridgeResult.stale) show(node, { ...node.loraBridgeResult, stale: why });
}

// The node's own input values (links left out), as the prompt the pod ran holds them.
function sameInputs(node, inputs) {
  return (node.widgets ?? []).every((w) => w.name === PANEL || !(w.name in inputs) || Array.isArray(inputs[w.name])
    || String(inputs[w.name]) === String(w.value));
}

// The pod's newest runs, newest first; with `promptId`, that one run only (ComfyUI files a run in its
// history just after it reports success: asked again for a few seconds).
async function newestRuns(promptId) {
  for (let attempt = 0; ; attempt++) {
    const response = await api.fetchApi(promptId ? `/history/${encodeURIComponent(promptId)}` : `/history?max_items=${HISTORY_ITEMS}`);
    const history = response.ok ? await response.json() : {};
    const runs = Object.values(history);
    if (runs.length || !promptId || attempt >= HISTORY_WAITS) {
      return runs.sort((a, b) => (a.prompt?.[0] ?? 0) - (b.prompt?.[0] ?? 0)).reverse();
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

// Each of our nodes (those of `only`, if given) shows its newest run in the pod's history, stale if that run
// failed or its inputs differ. A run that served the node from ComfyUI's cache reports nothing for it: its
// result is that of the newest earlier successful run with the same inputs.
async function restore(promptId, only) {
  const nodes = (app.graph?._nodes ?? []).filter((node) => isOurs(node) && (!only || only.has(String(node.id))));
  if (!nodes.length) return;
  let runs;
  try {
    runs = await newestRuns(promptId);
  } catch (error) {
    console.warn("[lora-bridge] could not read the pod's history", error);
    return;
  }
  for (const node of nodes) {
    const id = String(node.id);
    let cached = false;
    for (const run of runs) {
      const entry = run.prompt?.[2]?.[id];
      if (entry?.class_type !== node.type) continue;
      const lines = run.outputs?.[id]?.[KEY];
      const failed = run.status?.status_str === "error";
      if (!lines && !failed) {
        cached = true; // served from the cache: look further back
        continue;
      }
      if (cached && (failed || !sameInputs(node, entry.inputs ?? {}))) continue;
      const stale = failed ? "the last run failed" : sameInputs(node, entry.inputs ?? {}) ? null
        : "the inputs changed since this run";
      show(node, { lines: lines ?? node.loraBridgeResult?.lines ?? [], stale });
      break;
    }
  }
}

const cachedIn = new Map(); // prompt id -> the ids of the nodes ComfyUI served from its cache in it

app.registerExtension({
  name: "comfyui-lora-bridge.summary",
  async init() {
    ids = await nodeRoles();
  },
  setup() {
    api.addEventListener("execution_error", ({ detail }) => {
      const why = `the last run failed${detail?.node_type ? ` at ${detail.node_type}` : ""}`;
      for (const node of (app.graph?._nodes ?? []).filter(isOurs)) markStale(node, why);
    });
    api.addEventListener("execution_cached", ({ detail }) => cachedIn.set(detail?.prompt_id, new Set((detail?.nodes ?? []).map(String))));
    api.addEventListener("execution_success", async ({ detail }) => {
      const cached = cachedIn.get(detail?.prompt_id);
      cachedIn.delete(detail?.prompt_id);
      await restore(detail?.prompt_id); // what this run filed in the pod's history
      if (cached?.size) await restore(undefined, cached);
    });
    console.info("[lora-bridge] front-end extension ready");
  },
  async afterConfigureGraph() {
    (app.graph?._nodes ?? []).filter((node) => node.type === ids.load_file).forEach(describeFile);
    await restore(); // a tab switch, a reopened workflow, a reload
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isPackNode(ids, nodeData?.name)) return;
    if (nodeData.name === ids.load_file) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        onNodeCreated?.apply(this, arguments);
        const button = this.addWidget("button", "LoRA info", null, () => toggleDetails(this), { serialize: false });
        button.serialize = false;
        describeFile(this); // reads the picked file once the list is in: by then a loaded workflow has set it
      };
    }
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (Array.isArray(message?.[KEY])) show(this, { lines: message[KEY], stale: null });
    };
    const onWidgetChanged = nodeType.prototype.onWidgetChanged;
    nodeType.prototype.onWidgetChanged = function (name) {
      onWidgetChanged?.apply(this, arguments);
      const widget = this.widgets?.find((w) => w.name === name);
      if (widget && widget.serialize !== false) markStale(this, "the inputs changed since this run"); // not our views, not buttons
      if (name === "lora_name") {
        this.loraBridgeDetails = null; // they were another file's
        describeFile(this);
      }
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      onConnectionsChange?.apply(this, arguments);
      markStale(this, "the inputs changed since this run");
      if (this.type === ids.load_file) describeFile(this); // the model its LoRA goes into may be another one
    };
  },
});
