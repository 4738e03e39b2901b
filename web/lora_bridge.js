// Shows on each LoRA Bridge node what it did in its last run: one read-only line per LoRA
// (applied or skipped, base model, rank, matched keys, strengths, trigger words), warnings
// standing out. The result lives with the node, never in the saved workflow: after a tab switch
// or a reload it is read back from the pod's own history (the newest run of that node), and it
// is marked stale when a run fails or the node's inputs are not those of the run it shows.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PANEL = "lora_bridge_result";
const KEY = "lora_bridge"; // the nodes' UI output
const WARNING = /\bskipped\b|apply anyway|\bdropped\b|not found|mismatch|\berror\b|\b0\/\d+ keys/i;
const HISTORY_ITEMS = 64;

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
  const panel = panelOf(node);
  const rows = state.lines.map((text) => {
    const row = document.createElement("div");
    row.textContent = text;
    if (WARNING.test(text)) {
      row.className = "lora-bridge-warning";
      row.style.color = "#f0b429";
      row.style.fontWeight = "bold";
    }
    return row;
  });
  if (state.stale) {
    const note = document.createElement("div");
    note.className = "lora-bridge-stale";
    note.textContent = `stale: ${state.stale}`;
    note.style.color = "#ff7b72";
    rows.unshift(note);
  }
  panel.element.replaceChildren(...rows);
  panel.element.dataset.stale = state.stale ? "true" : "false";
  panel.element.style.opacity = state.stale ? "0.6" : "1";
  panel.rows ??= new ResizeObserver(() => grow(node)); // rows are measured once the editor lays them out
  panel.rows.disconnect();
  rows.forEach((row) => panel.rows.observe(row));
  node.setDirtyCanvas(true, true);
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
  if (node.loraBridgeResult && !node.loraBridgeResult.stale) show(node, { ...node.loraBridgeResult, stale: why });
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
    await restore(); // a tab switch, a reopened workflow, a reload
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("LoraBridge")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (Array.isArray(message?.[KEY])) show(this, { lines: message[KEY], stale: null });
    };
    const onWidgetChanged = nodeType.prototype.onWidgetChanged;
    nodeType.prototype.onWidgetChanged = function (name) {
      onWidgetChanged?.apply(this, arguments);
      if (name !== PANEL) markStale(this, "the inputs changed since this run");
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      onConnectionsChange?.apply(this, arguments);
      markStale(this, "the inputs changed since this run");
    };
  },
});
