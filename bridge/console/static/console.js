// The console's own script: drag-and-drop upload into the library, and live progress on a job's page over its
// event stream. Everything else is htmx (hx-* attributes in the templates).
"use strict";

function uploadFile(file, result) {
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("status", document.getElementById("drop-ready").checked ? "ready" : "pending");
  result.textContent = `Checking ${file.name}…`;
  fetch(document.body.dataset.prefix + "/loras/upload", {method: "POST", body: form, credentials: "same-origin"})
    .then(async (resp) => {
      result.innerHTML = await resp.text();
      if (resp.ok) htmx.trigger(document.querySelector("form.filters"), "change");
    })
    .catch((err) => { result.textContent = `The upload did not reach the bridge: ${err}`; });
}

function setUpDrop() {
  const zone = document.getElementById("drop");
  if (!zone) return;
  const result = document.getElementById("drop-result");
  const input = document.getElementById("drop-file");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    for (const file of e.dataTransfer.files) uploadFile(file, result);
  });
  input.addEventListener("change", () => { for (const file of input.files) uploadFile(file, result); input.value = ""; });
}

const ENDED = new Set(["succeeded", "failed", "cancelled", "interrupted"]);

function followJob() {
  const live = document.querySelector("[data-events]");
  if (!live) return;
  const bar = live.querySelector("progress");
  const step = live.querySelector(".step");
  const node = live.querySelector(".node");
  const status = document.getElementById("job-status");
  const source = new EventSource(live.dataset.events);
  const show = (type, data) => {
    if (type === "progress") {
      bar.max = data.max || 1;
      bar.value = data.value || 0;
      step.textContent = `step ${data.value}/${data.max}${data.stage ? ` (${data.stage})` : ""}`;
    }
    if ((type === "executing" || type === "progress") && data.node) node.textContent = `node ${data.node}`;
    if (["queued", "preparing", "submitted", "running", ...ENDED].includes(type)) status.textContent = type;
    if (ENDED.has(type)) {
      source.close();
      if (type === "succeeded") {
        bar.value = bar.max;
        step.textContent = "done";
      }
      setTimeout(() => window.location.reload(), 800);  // then the ended job's page: outputs, timings, cost
    }
  };
  for (const type of ["queued", "preparing", "submitted", "running", "executing", "progress", ...ENDED]) {
    source.addEventListener(type, (e) => show(type, JSON.parse(e.data)));
  }
}

document.addEventListener("DOMContentLoaded", () => { setUpDrop(); followJob(); });
