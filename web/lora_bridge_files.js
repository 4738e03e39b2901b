// The pod's LoRA files as the pack inspected them (GET /lora_bridge/loras: base family and variant,
// rank, trigger words) and the model file a node is fed from (the checkpoint or diffusion model up
// its `model` input, or up the input its LORA output feeds), so that pickers can name each file's
// base model and mark the files made for another one. Not an extension itself.
import { podCall } from "./lora_bridge_pod.js";

const FRESH_MS = 10000;
const MAX_HOPS = 32;
const listings = new Map(); // query -> {at, promise}

// {folder, name} of the model file that reaches `node`'s `model` input, through any nodes that pass a
// model on (LoRA loaders, model patches); null when none is connected or it is not a file loader.
export function modelFileOf(node) {
  for (let hops = 0; node && hops < MAX_HOPS; hops++) {
    const slot = node.findInputSlot?.("model") ?? -1;
    const origin = slot >= 0 ? node.getInputNode?.(slot) : null;
    const value = (name) => origin?.widgets?.find((w) => w.name === name)?.value;
    if (value("ckpt_name")) return { folder: "checkpoints", name: value("ckpt_name") };
    if (value("unet_name")) return { folder: "diffusion_models", name: value("unet_name") };
    node = origin;
  }
  return null;
}

// The model a node's LoRAs go into: its own `model` input, else that of a node its first output feeds.
export function modelFeeding(node) {
  if ((node.findInputSlot?.("model") ?? -1) >= 0) return modelFileOf(node);
  for (const target of node.getOutputNodes?.(0) ?? []) {
    const file = modelFileOf(target);
    if (file) return file;
  }
  return null;
}

async function list(model) {
  const query = model ? `?model_folder=${encodeURIComponent(model.folder)}&model_name=${encodeURIComponent(model.name)}` : "";
  let entry = listings.get(query);
  if (!entry || Date.now() - entry.at > FRESH_MS) {
    entry = { at: Date.now(), promise: podCall("GET", `/lora_bridge/loras${query}`) };
    entry.promise.catch(() => listings.delete(query));
    listings.set(query, entry);
  }
  return entry.promise;
}

// {byName: Map(name -> file), model: the model's family (null when unknown), modelError: why not}.
export async function loraFiles(model) {
  let listing;
  let modelError = null;
  try {
    listing = await list(model);
  } catch (error) {
    if (!model) throw error;
    modelError = error.message; // e.g. a checkpoint this pod does not have: the files are still listed
    listing = await list(null);
  }
  return { byName: new Map(listing.loras.map((file) => [file.name, file])), model: listing.model ?? null, modelError };
}

// "SDXL · rank 4": a file's base model (with its variant) and rank.
export function badge(file) {
  if (file.error) return "unreadable";
  const rank = Math.max(0, ...(file.ranks ?? []));
  return `${file.family_name ?? "unknown"}${rank ? ` · rank ${rank}` : ""}`;
}

// Why `file` does not fit the connected model ("not for SD1.x"), or null when it fits or nobody knows.
export function misfit(file, model) {
  return file?.fits_model === false && model ? `not for ${model.family_name}` : null;
}

// "SD1.x · rank 8 · trigger: ohwx", then "· not for SDXL" on a misfit: what pickers show beside a name.
export function describe(file, model) {
  const triggers = file.trigger_words?.length ? ` · trigger: ${file.trigger_words.join(", ")}` : "";
  const mark = misfit(file, model);
  return `${badge(file)}${triggers}${mark ? ` · ${mark}` : ""}`;
}

// One file inspected whole, on demand (metadata, SHA-256: a full read on the pod, cached there).
export async function loraInfo(name) {
  return podCall("GET", `/lora_bridge/loras/info?name=${encodeURIComponent(name)}`);
}

const METADATA_LINES = 12;
const clip = (text, n = 160) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

// The lines a user reads before running: hash, format and shape, trigger words, then the metadata.
export function infoLines(info) {
  const alpha = info.alphas?.length ? ` · alpha ${[...new Set(info.alphas)].join("/")}` : "";
  const lines = [
    `sha256 ${info.sha256}${info.autov2 ? ` (AutoV2 ${info.autov2})` : ""}`,
    `${info.format} · ${info.family_name} · rank ${Math.max(0, ...(info.ranks ?? []))}${alpha} · ${info.modules} modules` +
      ` · ${(info.size / 1048576).toFixed(1)} MB`,
    `trigger words: ${info.trigger_words?.length ? info.trigger_words.join(", ") : "none named"}`,
    ...(info.warnings ?? []).map((w) => `warning: ${w}`),
  ];
  const metadata = Object.entries(info.metadata ?? {});
  lines.push(...metadata.slice(0, METADATA_LINES).map(([key, value]) => clip(`${key}: ${value}`)));
  if (metadata.length > METADATA_LINES) lines.push(`… ${metadata.length - METADATA_LINES} more metadata fields`);
  return lines;
}
