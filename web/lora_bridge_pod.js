// Calls to this pod's /lora_bridge routes from the editor, with the pod token set in
// Settings → LoRA Bridge where the pod requires one (LORA_BRIDGE_TOKEN). Not an extension itself.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

export const TOKEN_SETTING = "LoraBridge.PodToken";

function token() {
  return app.extensionManager?.setting?.get?.(TOKEN_SETTING) ?? app.ui?.settings?.getSettingValue?.(TOKEN_SETTING) ?? "";
}

export async function podCall(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await api.fetchApi(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) throw new Error("the pod needs its token: set it in Settings → LoRA Bridge");
  if (!response.ok) throw new Error(data?.error?.message ?? `the pod answered ${response.status}`);
  return data;
}
