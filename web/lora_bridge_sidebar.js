// The "LoRA Bridge" sidebar tab: this pod's LoRA caches (disk and memory, with their counters and
// files), a prefetch by source, and clearing, through the same pod routes the bridge uses. Where
// the pod requires a token (LORA_BRIDGE_TOKEN), the one set in Settings → LoRA Bridge is sent.
import { app } from "../../scripts/app.js";
import { TOKEN_SETTING, podCall as call } from "./lora_bridge_pod.js";

function el(tag, { dataset, ...props } = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset ?? {});
  node.append(...children);
  return node;
}

const MB = (bytes) => `${(bytes / 1048576).toFixed(1)} MB`;

function counters(title, stats, testid) {
  const rate = `${Math.round((stats.hit_rate ?? 0) * 100)} %`;
  const budget = stats.budget_bytes ? ` of ${MB(stats.budget_bytes)}` : "";
  return el("section", { className: "lora-bridge-counters", dataset: { testid } },
    el("h4", { textContent: title, style: "margin: 8px 0 4px" }),
    el("div", { textContent: `${stats.entries} files, ${MB(stats.bytes)}${budget}` }),
    el("div", { textContent: `hits ${stats.hits} · misses ${stats.misses} · evictions ${stats.evictions} · hit rate ${rate}` }),
    el("ul", { style: "margin: 4px 0; padding-left: 16px" }, ...(stats.items ?? []).map((item) =>
      el("li", { textContent: `${(item.names ?? [item.name]).filter(Boolean).join(", ") || item.sha256.slice(0, 12)}` +
        `${item.pinned ? " (pinned)" : ""}` }))));
}

function render(container) {
  const status = el("div", { className: "lora-bridge-status", style: "min-height: 1.4em; margin: 4px 0" });
  const stats = el("div", { className: "lora-bridge-stats" });
  const source = el("input", { type: "text", placeholder: "s3://bucket/key or https://…",
    className: "p-inputtext p-component lora-bridge-source", ariaLabel: "LoRA source to prefetch",
    style: "width: 100%; box-sizing: border-box" });
  const memory = el("input", { type: "checkbox", className: "lora-bridge-memory" });
  const say = (text, error = false) => { status.textContent = text; status.style.color = error ? "#ff7b72" : ""; };
  const run = (what, action) => async () => {
    say(`${what}…`);
    try {
      say(await action());
      await refresh();
    } catch (error) {
      say(`${what} failed: ${error.message}`, true);
    }
  };
  async function refresh() {
    try {
      const cache = await call("GET", "/lora_bridge/cache");
      stats.replaceChildren(counters("Disk cache", cache.disk, "disk"), counters("Memory cache", cache.memory, "memory"));
    } catch (error) {
      stats.replaceChildren();
      say(error.message, true);
    }
  }
  const button = (text, cls, onclick) => el("button", { textContent: text, className: `p-button p-button-sm ${cls}`, onclick,
    style: "margin: 2px 4px 2px 0" });
  container.replaceChildren(el("div", { className: "lora-bridge-sidebar", style: "padding: 8px; font-size: 13px" },
    el("h3", { textContent: "LoRA Bridge", style: "margin: 0 0 8px" }),
    button("Refresh", "lora-bridge-refresh", () => refresh()),
    button("Clear memory", "lora-bridge-clear-memory", run("clearing", async () =>
      `cleared ${(await call("POST", "/lora_bridge/cache/clear", { memory: true, disk: false })).cleared.memory} from memory`)),
    button("Clear disk", "lora-bridge-clear-disk", run("clearing", async () =>
      `removed ${(await call("POST", "/lora_bridge/cache/clear", { memory: false, disk: true })).cleared.disk} unused files`)),
    status, stats,
    el("h4", { textContent: "Prefetch", style: "margin: 12px 0 4px" }), source,
    el("label", {}, memory, " and load into memory"),
    button("Prefetch", "lora-bridge-prefetch", run("prefetching", async () => {
      const done = await call("POST", "/lora_bridge/prefetch", { source: source.value.trim(), memory: memory.checked });
      return `fetched ${done.name ?? done.sha256.slice(0, 12)} (${done.family}, ${MB(done.size)})`;
    }))));
  refresh();
}

app.registerExtension({
  name: "comfyui-lora-bridge.sidebar",
  settings: [{ id: TOKEN_SETTING, category: ["LoRA Bridge", "Pod", "Token"], name: "Pod route token (LORA_BRIDGE_TOKEN)",
    type: "text", defaultValue: "", tooltip: "Sent as Authorization: Bearer to this pod's /lora_bridge routes." }],
  setup() {
    app.extensionManager?.registerSidebarTab?.({
      id: "lora-bridge", icon: "pi pi-box", title: "LoRA Bridge", tooltip: "LoRA Bridge: caches, prefetch", type: "custom",
      render,
    });
  },
});
