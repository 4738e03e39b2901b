// The pack's node ids by role (fetch, load_file, apply, apply_stack, trigger_words, save_trained), as the
// pack states them (GET /lora_bridge/nodes, from bridge/pack_protocol.py): the views find their nodes by
// role, and no node id is written in the front end. Fetched once; every extension of the pack awaits it in
// its `init`, which ComfyUI runs before it registers any node. Not an extension itself.
import { api } from "../../scripts/api.js";

let roles = null;

export function nodeRoles() {
  roles ??= api.fetchApi("/lora_bridge/nodes").then((response) => {
    if (!response.ok) throw new Error(`LoRA Bridge: the pod answered ${response.status} for its node ids`);
    return response.json();
  });
  return roles;
}

export function isPackNode(ids, type) {
  return Object.values(ids).includes(type);
}
