// Shows on each LoRA Bridge node what it did in the last run: which LoRA was applied or
// skipped, its base model, rank, how many keys matched, and its trigger words.
import { app } from "../../scripts/app.js";

const WIDGET = "lora_bridge_summary";

function showSummary(node, lines) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = node.addWidget("text", WIDGET, "", () => {}, { serialize: false });
    widget.serialize = false; // never saved into workflows or prompts
  }
  widget.value = lines.join("\n");
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "comfyui-lora-bridge.summary",
  setup() {
    console.info("[lora-bridge] front-end extension ready");
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("LoraBridge")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (Array.isArray(message?.lora_bridge)) showSummary(this, message.lora_bridge);
    };
  },
});
