// The row editor of Apply LoRA Stack, the node's face: one row per LoRA (an on/off switch, a searchable
// picker of the pod's LoRA files with their base model, the file's details on demand, model and clip
// strength steppers, move up/down, remove), "+ Add LoRA", and presets (the rows saved under a name on
// the pod, loaded into any stack node). The rows read and write the node's `loras` JSON input, the
// same text API-built graphs send, so a graph edited here runs anywhere; fields the rows do not show
// (sha256, a source's link name) are kept. The JSON itself stays behind "edit as JSON" (shown by
// itself while it is not a list the rows can show). Files made for another base model than the
// connected one are marked. Styled with the front end's own theme variables, in the classic canvas
// and in Nodes 2.0 alike; every control is a labelled native one (keyboard usable).
import { app } from "../../scripts/app.js";
import { describe, infoLines, loraFiles, loraInfo, misfit, modelFileOf } from "./lora_bridge_files.js";
import { nodeRoles } from "./lora_bridge_nodes.js";
import { podCall } from "./lora_bridge_pod.js";
import { grow, setWidgetValue } from "./lora_bridge_widgets.js";

let ids = {}; // the pack's node ids by role (lora_bridge_nodes.js)
const EDITOR = "lora_bridge_stack";
const STRENGTH = { min: -100, max: 100, step: 0.05 }; // the protocol's range (bridge/pack_protocol.py)
const WIDTH = 480; // a row's picker shows a file name whole
let lists = 0;
const STYLE = `
.lora-bridge-stack input, .lora-bridge-stack button, .lora-bridge-stack select {
  font: inherit; color: var(--input-text, #ddd); background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #4e4e4e); border-radius: 6px; padding: 2px 6px; box-sizing: border-box;
}
.lora-bridge-stack button:not(:disabled) { cursor: pointer; }
.lora-bridge-stack button:disabled { opacity: 0.4; }
.lora-bridge-stack :is(input, button, select):focus-visible { outline: 2px solid var(--p-primary-color, #0b8ce9); outline-offset: 1px; }
.lora-bridge-stack input.lora-bridge-enabled { appearance: none; width: 2.1em; height: 1.15em; padding: 0; border-radius: 1em;
  position: relative; flex: none; background: var(--border-color, #4e4e4e); }
.lora-bridge-stack input.lora-bridge-enabled::after { content: ""; position: absolute; top: 0.12em; left: 0.15em; width: 0.8em;
  height: 0.8em; border-radius: 50%; background: var(--input-text, #ddd); transition: left 0.1s; }
.lora-bridge-stack input.lora-bridge-enabled:checked { background: var(--p-primary-color, #0b8ce9); }
.lora-bridge-stack input.lora-bridge-enabled:checked::after { left: 1.1em; }
.lora-bridge-stack .lora-bridge-bar { display: flex; gap: 4px; align-items: center; margin: 2px 0 6px; flex-wrap: wrap; }
`;

function addStyle() {
  if (document.getElementById("lora-bridge-stack-style")) return;
  document.head.append(Object.assign(document.createElement("style"), { id: "lora-bridge-stack-style", textContent: STYLE }));
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function jsonOf(node) {
  return node.widgets?.find((w) => w.name === "loras");
}

// The entries of the `loras` input, or {error} when it is not a JSON list of objects.
function entriesOf(node) {
  try {
    const text = String(jsonOf(node)?.value ?? "").trim();
    const entries = text ? JSON.parse(text) : [];
    if (!Array.isArray(entries) || entries.some((e) => !e || typeof e !== "object" || Array.isArray(e))) {
      return { error: "loras is not a JSON list of objects" };
    }
    return { entries };
  } catch (error) {
    return { error: `loras is not valid JSON (${error.message})` };
  }
}

// One entry per line: readable in the text box, and what the pod parses.
function write(node, entries) {
  setWidgetValue(node, jsonOf(node), entries.length ? `[\n${entries.map((e) => `  ${JSON.stringify(e)}`).join(",\n")}\n]` : "[]");
  render(node);
}

function label(entry) {
  return entry.source ?? entry.name ?? "";
}

// A picked text names a file in the loras folders, or a source (s3://, https://, store:) to fetch.
function pick(entry, text) {
  const { source, name, sha256, ...rest } = entry;
  if (/^[a-z][a-z0-9+.-]*:/i.test(text)) {
    return { source: text, ...(text === source ? { ...(name ? { name } : {}), ...(sha256 ? { sha256 } : {}) } : {}), ...rest };
  }
  return { name: text, ...rest };
}

function strengthInput(entry, key, title, onChange) {
  const input = el("input", { type: "number", ...STRENGTH, title, className: `lora-bridge-${key}` });
  input.setAttribute("aria-label", title);
  input.value = String(entry[key] ?? 1);
  input.style.cssText = "width: 4.5em; min-width: 0";
  input.addEventListener("change", () => {
    const value = input.valueAsNumber;
    const valid = Number.isFinite(value) && value >= STRENGTH.min && value <= STRENGTH.max;
    input.style.outline = valid ? "" : "1px solid #ff7b72";
    if (valid) onChange(value);
  });
  return input;
}

function rowOf(node, entries, index, files) {
  const entry = entries[index];
  const update = (next) => write(node, entries.map((e, i) => (i === index ? next : e)));
  const move = (to) => {
    const order = [...entries];
    order.splice(to, 0, ...order.splice(index, 1));
    write(node, order);
  };
  const on = el("input", { type: "checkbox", checked: entry.enabled !== false, title: "on: applied; off: kept, not applied",
    className: "lora-bridge-enabled" });
  on.setAttribute("role", "switch");
  on.setAttribute("aria-label", `LoRA ${index + 1} on`);
  on.addEventListener("change", () => {
    const { enabled, ...rest } = entry;
    update(on.checked ? rest : { ...rest, enabled: false });
  });
  const picker = el("input", { value: label(entry), className: "lora-bridge-pick", placeholder: "LoRA file or s3:// / https:// source",
    title: "type to search the pod's LoRA files, or paste a source" });
  picker.setAttribute("list", files.listId);
  picker.setAttribute("aria-label", `LoRA ${index + 1}`);
  picker.style.cssText = "flex: 1; min-width: 10em";
  picker.addEventListener("change", () => picker.value.trim() && update(pick(entry, picker.value.trim())));
  const file = files.byName.get(entry.name);
  const mark = misfit(file, files.model);
  const note = el("span", { className: mark ? "lora-bridge-misfit" : "lora-bridge-badge", textContent: file ? describe(file, files.model) : "" });
  note.style.cssText = `display: block; margin-left: 22px; font-size: 10px; color: ${mark ? "#f0b429" : "#8ab4f8"}`;
  const button = (text, title, className, action, disabled = false) => {
    const b = el("button", { textContent: text, title, className, disabled, type: "button" });
    b.setAttribute("aria-label", `${title} (LoRA ${index + 1})`);
    b.style.cssText = "padding: 0 4px; min-width: 1.6em";
    b.addEventListener("click", action);
    return b;
  };
  const details = node.loraBridgeStack.details;
  const info = button("i", "this file inspected whole: hash, metadata", "lora-bridge-info-button", async () => {
    if (details.has(entry.name)) {
      details.delete(entry.name);
    } else {
      details.set(entry.name, ["reading the whole file…"]);
      draw(node, node.loraBridgeStack.files ?? files);
      details.set(entry.name, await loraInfo(entry.name).then(infoLines, (error) => [`no details: ${error.message}`]));
    }
    draw(node, node.loraBridgeStack.files ?? files);
  }, !file);
  const controls = el("div", {}, on, picker, info,
    strengthInput(entry, "strength_model", "model strength", (v) => update({ ...entry, strength_model: v })),
    strengthInput(entry, "strength_clip", "clip strength", (v) => update({ ...entry, strength_clip: v })),
    button("↑", "move up", "lora-bridge-up", () => move(index - 1), index === 0),
    button("↓", "move down", "lora-bridge-down", () => move(index + 1), index === entries.length - 1),
    button("✕", "remove", "lora-bridge-remove", () => write(node, entries.filter((_, i) => i !== index))));
  controls.style.cssText = "display: flex; gap: 4px; align-items: center";
  const row = el("div", { className: "lora-bridge-row" }, controls, note);
  row.dataset.misfit = mark ? "true" : "false";
  row.style.cssText = `margin: 2px 0 4px; opacity: ${entry.enabled === false ? 0.5 : 1}`;
  if (!details.has(entry.name)) return [row];
  const lines = el("div", { className: "lora-bridge-detail" }, ...details.get(entry.name).map((text) => el("div", { textContent: text })));
  lines.style.cssText = "font: 10px/1.3 monospace; color: #aaa; margin: 0 0 4px 22px; white-space: pre-wrap; overflow-wrap: anywhere";
  return [row, lines];
}

// The `loras` text box shown or hidden (the front ends read `hidden` on the widget or in its options).
function showJson(node, shown) {
  const widget = jsonOf(node);
  if (!widget || widget.hidden === !shown) return; // unchanged: touching it would count as an edit on some front ends
  widget.hidden = !shown;
  if (widget.options) widget.options.hidden = !shown;
  const box = widget.element ?? widget.inputEl;
  if (box?.style) box.style.display = shown ? "" : "none";
  node.setDirtyCanvas?.(true, true);
}

function presetBar(node, parsed) {
  const editor = node.loraBridgeStack;
  const choose = el("select", { className: "lora-bridge-preset", title: "load a preset's rows into this stack" },
    el("option", { value: "", textContent: editor.presets ? "load a preset…" : "presets…" }),
    ...(editor.presets ?? []).map((p) => el("option", { value: p.name, textContent: `${p.name} (${p.loras.length})` })));
  choose.setAttribute("aria-label", "load a preset");
  choose.addEventListener("change", () => {
    const preset = editor.presets?.find((p) => p.name === choose.value);
    if (preset) write(node, preset.loras);
    say(node, preset ? `loaded preset ${preset.name}` : "");
  });
  const name = el("input", { className: "lora-bridge-preset-name", placeholder: "preset name", title: "save these rows as a preset" });
  name.setAttribute("aria-label", "preset name");
  name.style.cssText = "width: 9em; min-width: 0";
  name.value = editor.presetName ?? ""; // kept across redraws (a listing that lands while typing)
  name.addEventListener("input", () => { editor.presetName = name.value; });
  const save = el("button", { textContent: "Save preset", className: "lora-bridge-preset-save", type: "button",
    disabled: Boolean(parsed.error) });
  save.addEventListener("click", async () => {
    const wanted = name.value.trim();
    if (!wanted) return say(node, "name the preset first");
    try {
      const saved = await podCall("PUT", `/lora_bridge/presets/${encodeURIComponent(wanted)}`, { loras: parsed.entries });
      await loadPresets(node);
      say(node, `saved preset ${saved.name} (${saved.loras.length} LoRAs)`);
    } catch (error) {
      say(node, `not saved: ${error.message}`);
    }
  });
  const json = el("input", { type: "checkbox", className: "lora-bridge-json-toggle", checked: editor.json || Boolean(parsed.error),
    disabled: Boolean(parsed.error) });
  json.addEventListener("change", () => {
    editor.json = json.checked;
    showJson(node, json.checked);
    grow(node);
  });
  const toggle = el("label", { title: "show the loras JSON the rows write (what API graphs send)" }, json, " edit as JSON");
  toggle.style.cssText = "display: flex; gap: 4px; align-items: center; margin-left: auto";
  return el("div", { className: "lora-bridge-bar" }, choose, name, save, toggle);
}

function say(node, text) {
  const line = node.loraBridgeStack.element.querySelector(".lora-bridge-stack-status");
  if (line) line.textContent = text;
  node.loraBridgeStack.said = text;
}

async function loadPresets(node) {
  try {
    node.loraBridgeStack.presets = (await podCall("GET", "/lora_bridge/presets")).presets;
  } catch (error) {
    node.loraBridgeStack.presets = [];
    node.loraBridgeStack.said = `presets unavailable: ${error.message}`;
  }
  draw(node, node.loraBridgeStack.files ?? { listId: node.loraBridgeStack.listId, byName: new Map(), model: null, problem: null });
}

function draw(node, files) {
  const parsed = entriesOf(node);
  showJson(node, node.loraBridgeStack.json || Boolean(parsed.error)); // a text the rows cannot show is shown itself
  const add = el("button", { textContent: "+ Add LoRA", className: "lora-bridge-add", disabled: Boolean(parsed.error), type: "button" });
  add.addEventListener("click", () => write(node, [...parsed.entries, { name: "", strength_model: 1, strength_clip: 1 }]));
  const header = el("div", { textContent: "on · LoRA · info · model · clip", style: "opacity: 0.6; font-size: 10px" });
  const datalist = el("datalist", { id: files.listId }, ...[...files.byName.values()].map((file) =>
    el("option", { value: file.name, label: describe(file, files.model) })));
  const body = parsed.error ? [el("div", { className: "lora-bridge-warning", textContent: parsed.error, style: "color: #ff7b72" })]
    : parsed.entries.flatMap((_, i) => rowOf(node, parsed.entries, i, files));
  const status = files.problem ? [el("div", { textContent: files.problem, style: "color: #f0b429; font-size: 10px" })] : [];
  const said = el("div", { className: "lora-bridge-stack-status", textContent: node.loraBridgeStack.said ?? "",
    style: "font-size: 10px; opacity: 0.8" });
  said.setAttribute("aria-live", "polite");
  node.loraBridgeStack.element.replaceChildren(presetBar(node, parsed), datalist, header, ...body, ...status, add, said);
  grow(node);
}

// The rows from the `loras` text as it is now, at once; again once the pod has listed its files
// (with the connected model's family).
async function render(node) {
  const editor = node.loraBridgeStack;
  if (!editor) return;
  draw(node, editor.files ?? { listId: editor.listId, byName: new Map(), model: null, problem: null });
  const ticket = ++editor.ticket; // an older answer (another model, before the links were made) never wins
  let files;
  try {
    const { byName, model, modelError } = await loraFiles(modelFileOf(node));
    files = { listId: editor.listId, byName, model, problem: modelError ? `model family unknown: ${modelError}` : null };
  } catch (error) {
    files = { listId: editor.listId, byName: new Map(), model: null, problem: `LoRA files unavailable: ${error.message}` };
  }
  if (ticket !== editor.ticket) return;
  editor.files = files;
  draw(node, files);
}

function addEditor(node) {
  addStyle();
  const element = el("div", { className: "lora-bridge-stack" });
  element.style.cssText = "font: 11px sans-serif; color: var(--input-text, #ddd); overflow: hidden";
  const widget = node.addDOMWidget(EDITOR, "lora_bridge_stack", element, {
    serialize: false, hideOnZoom: false, getValue: () => undefined, setValue: () => {},
    getMinHeight: () => [...element.children].reduce((sum, child) => sum + child.offsetHeight + 4, 8),
  });
  widget.serialize = false; // the rows are a view of `loras`: nothing of their own is saved or sent
  node.loraBridgeStack = { element, listId: `lora-bridge-loras-${++lists}`, files: null, details: new Map(), ticket: 0,
    presets: null, json: false, said: "" };
  node.setSize([Math.max(node.size[0], WIDTH), node.size[1]]);
  const text = jsonOf(node);
  (text?.element ?? text?.inputEl)?.addEventListener?.("input", () => render(node)); // JSON typed by hand
  new ResizeObserver(() => grow(node)).observe(element);
  render(node);
  loadPresets(node);
}

app.registerExtension({
  name: "comfyui-lora-bridge.stack-editor",
  async init() {
    ids = await nodeRoles();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== ids.apply_stack) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      onNodeCreated?.apply(this, arguments);
      addEditor(this);
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      onConfigure?.apply(this, arguments);
      render(this); // a loaded workflow's loras
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      onConnectionsChange?.apply(this, arguments);
      render(this); // another model: other files fit
    };
  },
  afterConfigureGraph() {
    (app.graph?._nodes ?? []).filter((node) => node.type === ids.apply_stack).forEach(render); // links are in place now
  },
});
