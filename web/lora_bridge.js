// Shows on each LoRA Bridge node what it did in its last run: one read-only line per LoRA
// (applied or skipped, base model, rank, matched keys, strengths, trigger words), warnings
// standing out; on Load LoRA File, the picked file's base model, rank and trigger words before
// any run, and each file's base model beside its name in the drop-down. The result lives with the node, never in the saved workflow: after a tab switch
// or a reload it is read back from the pod's own history (the newest run of that node), and it
// is marked stale when a run fails or the node's inputs are not those of the run it shows.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { podCall } from "./lora_bridge_pod.js";

const PANEL = "lora_bridge_result";
const KEY = "lora_bridge"; // the nodes' UI output
const WARNING = /\bskipped\b|apply anyway|\bdropped\b|not found|mismatch|\berror\b|\b0\/\d+ keys/i;
const HISTORY_ITEMS = 64;
const LOAD_FILE = "LoraBridgeLoadFile";

function isOurs(node) {
  return typeof node?.type === "string" && node.type.startsWith("LoraBridge");
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
  if (node.loraBridgeInfo) rows.unshift(row(node.loraBridgeInfo, "lora-bridge-info", { color: "#8ab4f8" }));
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

// -- Load LoRA File: each file's base model, rank and trigger words, from the pack's own inspection --

let listing = null;

async function loraFiles() {
  if (!listing || Date.now() - listing.at > 10000) {
    const { loras } = await podCall("GET", "/lora_bridge/loras");
    listing = { at: Date.now(), byName: new Map(loras.map((file) => [file.name, file])) };
  }
  return listing.byName;
}

function badge(file) {
  if (file.error) return "unreadable";
  const rank = Math.max(0, ...(file.ranks ?? []));
  return `${file.family_name ?? "unknown"}${file.variant ? ` ${file.variant}` : ""}${rank ? ` · rank ${rank}` : ""}`;
}

async function describeFile(node) {
  const widget = node.widgets?.find((w) => w.name === "lora_name");
  if (!widget) return;
  try {
    const files = await loraFiles();
    widget.options.getOptionLabel = (value) => (files.has(value) ? `${value}  [${badge(files.get(value))}]` : String(value ?? ""));
    const file = files.get(widget.value);
    const triggers = file?.trigger_words?.length ? ` · trigger: ${file.trigger_words.join(", ")}` : "";
    node.loraBridgeInfo = file ? `${badge(file)}${triggers}` : `${widget.value}: not in the loras folders`;
  } catch (error) {
    node.loraBridgeInfo = `file info unavailable: ${error.message}`;
  }
  render(node);
}

// The node grows until every line of its result is in view (it never shrinks a size the user chose).
function grow(node) {
  const [width, height] = node.computeSize();
  if (height > node.size[1] || width > node.size[0]) {
    node.setSize([Math.max(node.size[0], width), Math.max(node.size[1], height)]);
    node.setDirtyCanvas(true, true);
  }
}

function markStale(node, why) {
  if (node.loraBridgeResult?.lines.length && !node.loraBridgeResult.stale) show(node, { ...node.loraBridgeResult, stale: why });
}

// The node's own input values (links left out), as the prompt the pod ran holds them.
function sameInputs(node, inputs) {
  return (node.widgets ?? []).every((w) => w.name === PANEL || !(w.name in inputs) || Array.isArray(inputs[w.name])
    || String(inputs[w.name]) === String(w.value));
}

async function newestRuns() {
  const response = await api.fetchApi(`/history?max_items=${HISTORY_ITEMS}`);
  const history = response.ok ? await response.json() : {};
  return Object.values(history).sort((a, b) => (a.prompt?.[0] ?? 0) - (b.prompt?.[0] ?? 0)).reverse();
}

// Each of our nodes shows its newest run in the pod's history (stale if that run failed or its inputs differ).
async function restore(graph = app.graph) {
  const nodes = (graph?._nodes ?? []).filter(isOurs);
  if (!nodes.length) return;
  let runs;
  try {
    runs = await newestRuns();
  } catch (error) {
    console.warn("[lora-bridge] could not read the pod's history", error);
    return;
  }
  for (const node of nodes) {
    const id = String(node.id);
    for (const run of runs) {
      const entry = run.prompt?.[2]?.[id];
      if (entry?.class_type !== node.type) continue;
      const lines = run.outputs?.[id]?.[KEY];
      const failed = run.status?.status_str === "error";
      if (!lines && !failed) continue;
      const stale = failed ? "the last run failed" : sameInputs(node, entry.inputs ?? {}) ? null
        : "the inputs changed since this run";
      show(node, { lines: lines ?? node.loraBridgeResult?.lines ?? [], stale });
      break;
    }
  }
}

app.registerExtension({
  name: "comfyui-lora-bridge.summary",
  setup() {
    api.addEventListener("execution_error", ({ detail }) => {
      const why = `the last run failed${detail?.node_type ? ` at ${detail.node_type}` : ""}`;
      for (const node of (app.graph?._nodes ?? []).filter(isOurs)) markStale(node, why);
    });
    api.addEventListener("execution_success", () => restore()); // cached nodes: their result is in the history
    console.info("[lora-bridge] front-end extension ready");
  },
  async afterConfigureGraph() {
    (app.graph?._nodes ?? []).filter((node) => node.type === LOAD_FILE).forEach(describeFile);
    await restore(); // a tab switch, a reopened workflow, a reload
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("LoraBridge")) return;
    if (nodeData.name === LOAD_FILE) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        onNodeCreated?.apply(this, arguments);
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
      if (name !== PANEL) markStale(this, "the inputs changed since this run");
      if (name === "lora_name") describeFile(this);
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      onConnectionsChange?.apply(this, arguments);
      markStale(this, "the inputs changed since this run");
    };
  },
});
