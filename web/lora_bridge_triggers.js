// Trigger words as tags on LoRA Trigger Words: one tag per word of the connected LoRA (a Load LoRA
// File's pick is known before any run, any other LoRA's after its first run); clicking a tag
// leaves the word out of the prompt, or takes it back, through the node's `leave_out` input.
import { app } from "../../scripts/app.js";
import { loraFiles } from "./lora_bridge_files.js";
import { nodeRoles } from "./lora_bridge_nodes.js";
import { setWidgetValue } from "./lora_bridge_widgets.js";

let ids = {}; // the pack's node ids by role (lora_bridge_nodes.js)
const TAGS = "lora_bridge_tags";

function leaveOut(node) {
  return node.widgets?.find((w) => w.name === "leave_out");
}

function leftOut(node) {
  return String(leaveOut(node)?.value ?? "").split(",").map((w) => w.trim()).filter(Boolean);
}

function toggle(node, word) {
  const widget = leaveOut(node);
  if (!widget) return;
  const words = leftOut(node);
  const at = words.findIndex((w) => w.toLowerCase() === word.toLowerCase());
  setWidgetValue(node, widget, (at >= 0 ? words.filter((_, i) => i !== at) : [...words, word]).join(", "));
  draw(node);
}

// The LoRA's trigger words: from the Load LoRA File it comes from, else from this node's last run.
async function wordsOf(node) {
  const slot = node.findInputSlot?.("lora") ?? -1;
  const origin = slot >= 0 ? node.getInputNode?.(slot) : null;
  if (origin?.type === ids.load_file) {
    const name = origin.widgets?.find((w) => w.name === "lora_name")?.value;
    const { byName } = await loraFiles(null);
    return { words: byName.get(name)?.trigger_words ?? [], from: name };
  }
  return { words: node.loraBridgeTriggers ?? [], from: node.loraBridgeTriggers ? "the last run" : null };
}

function draw(node) {
  const tags = node.loraBridgeTags;
  if (!tags) return;
  const off = new Set(leftOut(node).map((w) => w.toLowerCase()));
  const chips = tags.words.map((word) => {
    const out = off.has(word.toLowerCase());
    const chip = Object.assign(document.createElement("button"), {
      textContent: word, className: `lora-bridge-tag${out ? " lora-bridge-tag-off" : ""}`,
      title: out ? "left out: click to add it to the prompt again" : "added to the prompt: click to leave it out",
    });
    chip.dataset.on = out ? "false" : "true";
    chip.style.cssText = "margin: 2px; padding: 1px 8px; border-radius: 10px; border: 1px solid #8ab4f8; cursor: pointer;" +
      (out ? "background: transparent; color: #888; text-decoration: line-through" : "background: #24406b; color: #fff");
    chip.addEventListener("click", () => toggle(node, word));
    return chip;
  });
  const note = document.createElement("span");
  note.style.cssText = "font-size: 10px; opacity: 0.7";
  note.textContent = tags.words.length ? "" : tags.from ? "this LoRA names no trigger words" : "trigger words show once a LoRA is connected or has run";
  tags.element.replaceChildren(...chips, note);
  const [width, height] = node.computeSize();
  if (height > node.size[1]) node.setSize([Math.max(node.size[0], width), height]);
  node.setDirtyCanvas(true, true);
}

async function refresh(node) {
  const tags = node.loraBridgeTags;
  if (!tags) return;
  const ticket = ++tags.ticket; // only the newest answer is shown
  let found;
  try {
    found = await wordsOf(node);
  } catch (error) {
    found = { words: [], from: null };
    console.warn("[lora-bridge] trigger words unavailable", error);
  }
  if (ticket !== tags.ticket) return;
  Object.assign(tags, found);
  draw(node);
}

function addTags(node) {
  const element = document.createElement("div");
  element.className = "lora-bridge-tags";
  element.style.cssText = "display: flex; flex-wrap: wrap; align-items: center; font: 11px sans-serif";
  const widget = node.addDOMWidget(TAGS, "lora_bridge_tags", element, {
    serialize: false, hideOnZoom: false, getValue: () => undefined, setValue: () => {},
    getMinHeight: () => Math.max(24, element.scrollHeight + 4),
  });
  widget.serialize = false; // a view of `leave_out`
  node.loraBridgeTags = { element, words: [], from: null, ticket: 0 };
  refresh(node);
}

function wrap(nodeType, method, after) {
  const original = nodeType.prototype[method];
  nodeType.prototype[method] = function () {
    const result = original?.apply(this, arguments);
    after(this, ...arguments);
    return result;
  };
}

app.registerExtension({
  name: "comfyui-lora-bridge.trigger-tags",
  async init() {
    ids = await nodeRoles();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === ids.load_file) { // another pick: other words on the tag nodes it feeds
      wrap(nodeType, "onWidgetChanged", (node, name) => name === "lora_name"
        && (node.getOutputNodes?.(0) ?? []).filter((n) => n.type === ids.trigger_words).forEach(refresh));
    }
    if (nodeData?.name !== ids.trigger_words) return;
    wrap(nodeType, "onNodeCreated", addTags);
    wrap(nodeType, "onConfigure", refresh);
    wrap(nodeType, "onConnectionsChange", refresh);
    wrap(nodeType, "onExecuted", (node, message) => {
      if (Array.isArray(message?.trigger_words)) node.loraBridgeTriggers = message.trigger_words;
      refresh(node);
    });
  },
  afterConfigureGraph() {
    (app.graph?._nodes ?? []).filter((node) => node.type === ids.trigger_words).forEach(refresh);
  },
});
