"""The graph editor as a user sees it: ComfyUI's own front end in headless Chromium (DevTools
protocol), with the pack loaded in the real ComfyUI. A workflow is loaded and run from the Run
button; each LoRA Bridge node shows its result read-only, one line per LoRA, kept out of the
saved workflow; Load LoRA File shows the picked file's base model, rank and trigger words before
any run and names each file's base model in its drop-down; the result survives a tab switch and a reload (read back from the pod's
history); a failing run marks it stale. Apply LoRA Stack's row editor writes the JSON the pod
runs (rows on/off, strengths, picking, adding, removing, reordering); LoRAs made for another base
model than the connected one are marked; files are inspected on demand; trigger-word tags leave
words out of the prompt. The "LoRA Bridge" sidebar tab shows the pod's caches,
prefetches and clears, with the pod token from the settings. Screenshots are kept beside the
test's files. Each test runs on the front end the ComfyUI under test pins and on the newest the registry
had when .ci/setup was written (``.frontend-newest``; in the 0.33 leg), there with the classic canvas and with
Nodes 2.0."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import pytest
from browser import Browser
from comfyui_lora_bridge.testing.server import LocalComfy, free_port
from comfyui_lora_bridge.testing.weights import LoraSpec, cached_lora
from support import LORA_FILES, POD_TOKEN, pack_pod, txt2img

pytestmark = pytest.mark.comfy
NEWEST_FRONT_END = Path(__file__).resolve().parents[1] / ".frontend-newest" / "comfyui_frontend_package" / "static"
LOAD, APPLY, LOAD_B, STACK, TRIGGERS = 9001, 9002, 9003, 9004, 9005
READY = ("window.app?.graph && window.app.extensionManager?.command && document.querySelector('[data-testid=\"queue-button\"]')"
         " && window.app.extensions?.some((e) => e.name === 'comfyui-lora-bridge.summary')")


def workflow(stack: str) -> dict:
    """The SD1.5 template with Load LoRA File → Apply LoRA, then Apply LoRA Stack (skipping LoRAs of another family)."""
    graph = txt2img(steps=2, seed=77)
    graph[str(LOAD)] = {"class_type": "LoraBridgeLoadFile", "inputs": {"lora_name": LORA_FILES["kohya"]}}
    graph[str(APPLY)] = {"class_type": "LoraBridgeApply", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora": [str(LOAD), 0], "strength_model": 0.8, "strength_clip": 0.8,
        "on_mismatch": "error", "mode": "merge"}}
    graph[str(STACK)] = {"class_type": "LoraBridgeApplyStack", "inputs": {
        "model": [str(APPLY), 0], "clip": [str(APPLY), 1], "loras": stack, "on_mismatch": "skip", "mode": "merge"}}
    graph["3"]["inputs"]["model"] = [str(STACK), 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = [str(STACK), 1]
    return graph


STACK_LORAS = json.dumps([{"name": LORA_FILES["kohya_b"], "strength_model": 0.5}, {"name": LORA_FILES["peft"]},
                          {"name": LORA_FILES["sdxl"]}])  # the SDXL one is skipped on this SD1.5 model


def panel(node: int) -> str:
    return f"app.graph.getNodeById({node})?.widgets?.find((w) => w.name === 'lora_bridge_result')?.element"


def fits(*nodes: int) -> str:
    """True when every line of the nodes' results is in view: nothing cut, nothing scrolled away."""
    return " && ".join(f"({panel(n)}.scrollWidth <= {panel(n)}.clientWidth + 1 && {panel(n)}.scrollHeight <= "
                       f"{panel(n)}.clientHeight + 1)" for n in nodes)


def rows(node: int) -> str:
    return f"(() => {{ const el = {panel(node)}; return el ? [...el.children].map((c) => [c.className, c.textContent]) : null }})()"


# The front end's own start-up is over: its default graph is in. A workflow loaded before that is replaced.
STARTED = "app.graph?._nodes?.length > 0"


@dataclass(frozen=True)
class Editor:
    """A pod and how its graph editor is shown: Nodes 2.0 (``Comfy.VueNodes.Enabled``) or the classic canvas."""

    pod: LocalComfy
    nodes_2: bool = False

    @property
    def url(self) -> str:
        return self.pod.url


@pytest.fixture(scope="module")
def newest_front_end_pod(weights, s3):
    """A second pod like the session's, serving the newest front end (``--front-end-root``)."""
    assert NEWEST_FRONT_END.is_dir(), f"{NEWEST_FRONT_END} is missing: .ci/setup installs it"
    pod = pack_pod(weights, s3, "--front-end-root", str(NEWEST_FRONT_END))
    try:
        pod.start()
        yield pod
    finally:
        pod.cleanup()


@pytest.fixture(params=["pinned", pytest.param("newest", marks=pytest.mark.newest_front_end),
                        pytest.param("newest-nodes-2", marks=pytest.mark.newest_front_end)])
def editor(request, comfy) -> Editor:
    if request.param == "pinned":
        return Editor(comfy)
    return Editor(request.getfixturevalue("newest_front_end_pod"), nodes_2=request.param == "newest-nodes-2")


def _set(url: str, setting: str, value: object) -> None:
    request = urllib.request.Request(f"{url}/settings/{setting}", data=json.dumps(value).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).close()


def _forget_workflows(url: str) -> None:
    """Remove the workflows the front end saved on the pod: a later start could reopen an earlier test's under
    the name it loads (the newest front ends keep open workflows on the server)."""
    try:
        with urllib.request.urlopen(f"{url}/userdata?dir=workflows&recurse=true") as resp:
            names = json.load(resp)
    except urllib.error.HTTPError as exc:  # 404: no workflows folder yet
        assert exc.code == 404, exc
        return
    for name in names:
        quoted = urllib.parse.quote(f"workflows/{name}", safe="")
        urllib.request.urlopen(urllib.request.Request(f"{url}/userdata/{quoted}", method="DELETE")).close()


async def open_editor(page: Browser, editor: Editor) -> None:
    """ComfyUI's front end with the pack's extensions, started on its default graph (the first-run
    templates dialog is marked as seen, so every start takes that one path), in the editor's mode."""
    _forget_workflows(editor.url)
    _set(editor.url, "Comfy.TutorialCompleted", True)
    _set(editor.url, "Comfy.VueNodes.Enabled", editor.nodes_2)
    await page.open(editor.url)
    await page.wait_for(READY)
    await page.wait_for(STARTED, timeout=60)


def in_browser(tmp_path: Path, scenario: Callable[..., Awaitable[dict]], *args: object) -> dict:
    """Run ``scenario(page, *args)`` in a fresh headless Chromium; what it saw."""
    async def drive() -> dict:
        async with Browser(tmp_path / "profile") as page:
            return await scenario(page, *args)

    return asyncio.run(drive())


async def run_from_button(page: Browser) -> None:
    await page.evaluate("(() => { const run = document.querySelector('[data-testid=\"queue-button\"]');"
                        " (run.tagName === 'BUTTON' ? run : run.querySelector('button')).click(); })()")  # by front-end version


async def scenario(page: Browser, editor: Editor, shots: Path) -> dict:
    seen: dict = {}
    await open_editor(page, editor)
    await page.evaluate(f"app.extensionManager.setting.set('LoraBridge.PodToken', {json.dumps(POD_TOKEN)})")
    await page.evaluate(f"app.loadApiJson({json.dumps(workflow(STACK_LORAS))}, 'lora-bridge-e2e.json')")
    seen["info"] = await page.wait_for(f"{rows(LOAD)}?.[0]?.[0] === 'lora-bridge-info' && {rows(LOAD)}[0][1]", timeout=30)
    seen["labels"] = await page.evaluate(f"app.graph.getNodeById({LOAD}).widgets.find((w) => w.name === 'lora_name')"
                                         f".options.getOptionLabel({json.dumps(LORA_FILES['sdxl'])})")
    await run_from_button(page)
    await page.wait_for(f"{rows(STACK)}?.length === 3 && {rows(APPLY)}?.length === 1", timeout=180)
    seen["run"] = {n: await page.evaluate(rows(n)) for n in (LOAD, APPLY, STACK)}
    seen["tag"] = await page.evaluate(f"{panel(APPLY)}.tagName + ':' + {panel(APPLY)}.querySelectorAll('input,textarea').length")
    seen["fits"] = await page.wait_for(fits(LOAD, APPLY, STACK), timeout=10)
    seen["saved"] = await page.evaluate("JSON.stringify(app.graph.serialize())")
    await page.screenshot(shots / "after-run.png")
    await page.evaluate("app.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
    await page.wait_for(f"!app.graph.getNodeById({STACK})")
    await page.evaluate("app.extensionManager.command.execute('Workspace.PreviousOpenedWorkflow')")
    await page.wait_for(f"{rows(STACK)}?.length === 3", timeout=60)
    seen["tab"] = {n: await page.evaluate(rows(n)) for n in (APPLY, STACK)}
    await page.reload()
    await page.wait_for(READY)
    await page.wait_for(f"{rows(STACK)}?.length === 3", timeout=60)
    seen["reload"] = {n: await page.evaluate(rows(n)) for n in (APPLY, STACK)}
    seen["fits after reload"] = await page.wait_for(fits(APPLY, STACK), timeout=10)
    await page.screenshot(shots / "after-reload.png")
    broken = json.dumps([{"name": "no-such-lora.safetensors"}])
    await page.evaluate(f"(() => {{ const w = app.graph.getNodeById({STACK}).widgets.find((w) => w.name === 'loras');"
                        f" w.value = {json.dumps(broken)}; }})()")  # set as a script would: no change event
    await run_from_button(page)
    await page.wait_for(f"{panel(APPLY)}?.dataset.stale === 'true'", timeout=120)
    seen["failed"] = {n: await page.evaluate(rows(n)) for n in (APPLY, STACK)}
    await page.press("Escape")  # the error dialog
    await page.screenshot(shots / "after-failure.png")
    seen["console"] = list(page.console)
    return seen


def test_results_are_readable_persist_and_go_stale(editor: Editor, tmp_path: Path) -> None:
    seen = in_browser(tmp_path, scenario, editor, tmp_path)
    (apply_row,) = seen["run"][APPLY]
    assert apply_row[0] == "" and apply_row[1].startswith(f"applied {LORA_FILES['kohya']} (SD1.x, rank 8): ")
    assert "model 0.8, clip 0.8" in apply_row[1] and apply_row[1].endswith("trigger: ohwx")
    (c0, first), (c1, second), (c2, third) = seen["run"][STACK]  # one line per LoRA, each visible
    assert first.startswith(f"applied {LORA_FILES['kohya_b']}") and "model 0.5" in first and c0 == c1 == ""
    assert second.startswith(f"applied {LORA_FILES['peft']}")
    assert c2 == "lora-bridge-warning" and third.startswith(f"skipped {LORA_FILES['sdxl']} (SDXL")  # stands out
    assert seen["info"] == "SD1.x · rank 8 · trigger: ohwx"  # the picked file, before any run
    assert seen["labels"] == f"{LORA_FILES['sdxl']}  [SDXL · rank 2 · not for SD1.x]"  # each file's base model, misfits marked
    (info, _), (cls, loaded) = seen["run"][LOAD]
    assert info == "lora-bridge-info" and cls == "" and loaded.startswith(f"loaded {LORA_FILES['kohya']}: SD1.x")
    assert seen["tag"] == "DIV:0" and seen["fits"] and seen["fits after reload"]  # read-only, wrapped, all in view
    assert "applied " not in seen["saved"] and "lora_bridge_result" not in seen["saved"]  # never saved
    assert seen["tab"] == seen["reload"] == {APPLY: seen["run"][APPLY], STACK: seen["run"][STACK]}
    for node in (APPLY, STACK):
        (cls, note), *rest = seen["failed"][node]
        assert cls == "lora-bridge-stale" and note.startswith("stale: the last run failed"), seen["failed"]
        assert rest == seen["run"][node]
    ours = [line for line in seen["console"] if "lora-bridge" in line or "lora_bridge" in line]
    assert "[lora-bridge] front-end extension ready" in ours
    assert not [line for line in ours if "error" in line.lower() or "Uncaught" in line], ours
    assert (tmp_path / "after-reload.png").stat().st_size > 10_000


EDITOR = f"app.graph.getNodeById({STACK}).widgets.find((w) => w.name === 'lora_bridge_stack').element"
EDITOR_ROWS = f"[...{EDITOR}.querySelectorAll('.lora-bridge-row')]"
ROW_STATE = (f"{EDITOR_ROWS}.map((r) => ({{on: r.querySelector('.lora-bridge-enabled').checked, misfit: r.dataset.misfit,"
             " pick: r.querySelector('.lora-bridge-pick').value, note: r.querySelector('span').textContent,"
             " model: r.querySelector('.lora-bridge-strength_model').value, clip: r.querySelector('.lora-bridge-strength_clip').value}))")


def in_row(row: int, selector: str) -> str:
    return f"{EDITOR_ROWS}[{row}].querySelector('{selector}')"


async def enter(page: Browser, row: int, selector: str, value: object) -> None:
    """Type into a row's field and leave it, as a user does (the rows write on 'change')."""
    await page.evaluate(f"(() => {{ const el = {in_row(row, selector)}; el.value = {json.dumps(value)};"
                        " el.dispatchEvent(new Event('change', {bubbles: true})); })()")


async def press_in_row(page: Browser, row: int, selector: str) -> None:
    await page.evaluate(f"{in_row(row, selector)}.click()")


SAID = f"({EDITOR}.querySelector('.lora-bridge-stack-status')?.textContent ?? '')"
# the stack's JSON as users see it: some text box holding it is on screen (the classic canvas and Nodes 2.0 draw their own)
JSON_SHOWN = ("[...document.querySelectorAll('textarea')].some((t) => t.value.includes('test_kohya_b') && t.checkVisibility()"
              " && t.offsetHeight > 0)")


def pod_presets(url: str) -> dict[str, list[dict]]:
    request = urllib.request.Request(f"{url}/lora_bridge/presets", headers={"Authorization": f"Bearer {POD_TOKEN}"})
    with urllib.request.urlopen(request) as resp:
        return {preset["name"]: preset["loras"] for preset in json.load(resp)["presets"]}


def queued_loras(url: str, prompt_id: str) -> list[dict]:
    """The stack node's `loras` in the prompt the pod ran (its own history, filed just after success)."""
    for _ in range(100):
        with urllib.request.urlopen(f"{url}/history/{prompt_id}") as resp:
            history = json.load(resp)
        if prompt_id in history:
            return json.loads(history[prompt_id]["prompt"][2][str(STACK)]["inputs"]["loras"])
        time.sleep(0.1)
    raise AssertionError(f"prompt {prompt_id} never reached the pod's history")


async def edit_stack(page: Browser, editor: Editor, shots: Path) -> dict:
    seen: dict = {}
    await open_editor(page, editor)
    await page.evaluate(f"app.extensionManager.setting.set('LoraBridge.PodToken', {json.dumps(POD_TOKEN)})")
    graph = workflow(STACK_LORAS)
    graph[str(TRIGGERS)] = {"class_type": "LoraBridgeTriggerWords", "inputs": {"lora": [str(LOAD), 0], "text": "a portrait",
                                                                               "leave_out": ""}}
    graph["6"]["inputs"]["text"] = [str(TRIGGERS), 0]
    await page.evaluate(f"app.loadApiJson({json.dumps(graph)}, 'lora-bridge-stack.json')")
    tags = f"[...app.graph.getNodeById({TRIGGERS}).widgets.find((w) => w.name === 'lora_bridge_tags').element.querySelectorAll('button')]"
    seen["tags"] = await page.wait_for(f"{tags}.length && {tags}.map((b) => [b.textContent, b.dataset.on])", timeout=30)
    await page.evaluate(f"{tags}[0].click()")  # leave the LoRA's trigger word out
    seen["tags off"] = await page.evaluate(f"{tags}.map((b) => [b.textContent, b.dataset.on])")
    await page.wait_for(f"!!app.graph.getNodeById({TRIGGERS})")
    try:
        seen["loaded"] = await page.wait_for(f"{EDITOR_ROWS}.length === 3 && {EDITOR_ROWS}[2].dataset.misfit === 'true'"
                                             f" && {ROW_STATE}", timeout=60)
    except AssertionError as exc:  # what the editor showed instead
        await page.screenshot(shots / "stack-editor-not-loaded.png")
        shown = await page.evaluate(f"{EDITOR}?.innerText + ' | loras: ' + app.graph.getNodeById({STACK})?.widgets"
                                    ".find((w) => w.name === 'loras')?.value")
        raise AssertionError(f"the stack editor shows: {shown}") from exc
    seen["option"] = await page.evaluate(f"{EDITOR}.querySelector('option[value={json.dumps(LORA_FILES['sdxl'])}]').label")
    seen["load file label"] = await page.wait_for(
        f"app.graph.getNodeById({LOAD}).widgets.find((w) => w.name === 'lora_name')"
        f".options.getOptionLabel?.({json.dumps(LORA_FILES['sdxl'])})?.includes('not for') &&"
        f" app.graph.getNodeById({LOAD}).widgets.find((w) => w.name === 'lora_name').options.getOptionLabel({json.dumps(LORA_FILES['sdxl'])})",
        timeout=30)
    await press_in_row(page, 0, ".lora-bridge-info-button")  # the file inspected whole, before any run
    seen["row details"] = await page.wait_for(f"{EDITOR}.querySelector('.lora-bridge-detail')?.textContent.includes('sha256 ')"
                                              f" && [...{EDITOR}.querySelector('.lora-bridge-detail').children].map((d) => d.textContent)",
                                              timeout=30)
    await press_in_row(page, 0, ".lora-bridge-info-button")
    await page.evaluate(f"app.graph.getNodeById({LOAD}).widgets.find((w) => w.name === 'LoRA info').callback()")
    seen["file details"] = await page.wait_for(f"{rows(LOAD)}.filter((r) => r[0] === 'lora-bridge-detail').map((r) => r[1])"
                                               ".find((t) => t.startsWith('sha256 ')) && " + rows(LOAD), timeout=30)
    await press_in_row(page, 1, ".lora-bridge-enabled")  # peft: off
    await enter(page, 0, ".lora-bridge-strength_model", "0.7")
    await press_in_row(page, 2, ".lora-bridge-remove")  # the SDXL one
    await page.evaluate(f"{EDITOR}.querySelector('.lora-bridge-add').click()")
    await page.wait_for(f"{EDITOR_ROWS}.length === 3")
    await enter(page, 2, ".lora-bridge-pick", LORA_FILES["sdxl"])  # a wrong pick first: marked at once
    seen["wrong pick"] = await page.wait_for(f"{EDITOR_ROWS}[2].dataset.misfit === 'true' && {ROW_STATE}[2]", timeout=30)
    await enter(page, 2, ".lora-bridge-pick", LORA_FILES["kohya"])
    await enter(page, 2, ".lora-bridge-strength_clip", "0.3")
    await enter(page, 2, ".lora-bridge-strength_model", "250")  # out of range: refused, nothing written
    await press_in_row(page, 2, ".lora-bridge-up")
    seen["edited"] = await page.evaluate(ROW_STATE)
    seen["text"] = await page.evaluate(f"app.graph.getNodeById({STACK}).widgets.find((w) => w.name === 'loras').value")
    await page.evaluate(f"app.canvas.centerOnNode?.(app.graph.getNodeById({STACK})); app.canvas.setDirty(true, true)")
    await page.screenshot(shots / "stack-editor.png")
    await page.evaluate("window.succeeded = null;"
                        "comfyAPI.api.api.addEventListener('execution_success', (e) => { window.succeeded = e.detail.prompt_id })")
    await run_from_button(page)
    prompt_id = await page.wait_for("window.succeeded", timeout=180)
    seen["run"] = await page.wait_for(f"{rows(STACK)}?.length === 3 && {rows(STACK)}", timeout=30)  # this run's, not stale
    seen["queued"] = queued_loras(editor.url, prompt_id)
    seen["prompt"] = await page.evaluate(rows(TRIGGERS))
    seen["json before"] = await page.evaluate(JSON_SHOWN)  # the rows are the face; the JSON is behind its toggle
    await page.evaluate(f"(() => {{ const name = {EDITOR}.querySelector('.lora-bridge-preset-name'); name.value = 'e2e rows';"
                        " name.dispatchEvent(new Event('input', {bubbles: true})); })()")
    await page.evaluate(f"{EDITOR}.querySelector('.lora-bridge-preset-save').click()")
    seen["saved"] = await page.wait_for(f"{SAID}.startsWith('saved') && {SAID}", timeout=30)
    seen["on the pod"] = pod_presets(editor.url).get("e2e rows")
    await page.evaluate(f"{EDITOR}.querySelector('.lora-bridge-json-toggle').click()")
    seen["json toggled"] = await page.wait_for(f"{JSON_SHOWN} && {JSON_SHOWN}", timeout=10)
    for _ in range(3):
        await press_in_row(page, 0, ".lora-bridge-remove")
    await page.wait_for(f"{EDITOR_ROWS}.length === 0")
    await page.evaluate(f"(() => {{ const pick = {EDITOR}.querySelector('.lora-bridge-preset'); pick.value = 'e2e rows';"
                        " pick.dispatchEvent(new Event('change', {bubbles: true})); })()")
    seen["from preset"] = await page.wait_for(f"{EDITOR_ROWS}.length === 3 && {ROW_STATE}.every((r) => r.note) && {ROW_STATE}",
                                              timeout=30)
    seen["text from preset"] = await page.evaluate(f"app.graph.getNodeById({STACK}).widgets.find((w) => w.name === 'loras').value")
    await page.evaluate(f"{EDITOR}.querySelector('.lora-bridge-json-toggle').click()")
    seen["json after"] = await page.wait_for(f"!{JSON_SHOWN} && 'hidden'", timeout=10)
    await page.screenshot(shots / "stack-editor-preset.png")
    await page.reload()  # the rows come back from the saved workflow's loras
    await page.wait_for(READY)
    seen["reloaded"] = await page.wait_for(f"{EDITOR_ROWS}.length === 3 && {ROW_STATE}.every((r) => r.note) && {ROW_STATE}",
                                           timeout=60)  # and the pod's file list is in
    return seen


def test_the_stack_row_editor_writes_the_json_the_pod_runs_and_tags_toggle_trigger_words(editor: Editor,
                                                                                        tmp_path: Path) -> None:
    seen = in_browser(tmp_path, edit_stack, editor, tmp_path)
    kohya_b, peft, sdxl, kohya = (LORA_FILES[k] for k in ("kohya_b", "peft", "sdxl", "kohya"))
    assert [(r["pick"], r["on"], r["misfit"], r["model"]) for r in seen["loaded"]] == [
        (kohya_b, True, "false", "0.5"), (peft, True, "false", "1"), (sdxl, True, "true", "1")]
    assert seen["loaded"][2]["note"] == "SDXL · rank 2 · not for SD1.x" and seen["loaded"][0]["note"].startswith("SD1.x · rank ")
    assert seen["option"] == "SDXL · rank 2 · not for SD1.x"  # the searchable picker's entry
    assert seen["load file label"] == f"{sdxl}  [SDXL · rank 2 · not for SD1.x]"  # Load LoRA File feeds the same model
    assert seen["wrong pick"]["pick"] == sdxl and seen["wrong pick"]["note"].endswith("not for SD1.x")
    assert [(r["pick"], r["on"], r["misfit"], r["model"], r["clip"]) for r in seen["edited"]] == [
        (kohya_b, True, "false", "0.7", "1"), (kohya, True, "false", "1", "0.3"), (peft, False, "false", "1", "1")]
    expected = [{"name": kohya_b, "strength_model": 0.7}, {"name": kohya, "strength_model": 1, "strength_clip": 0.3},
                {"name": peft, "enabled": False}]
    assert json.loads(seen["text"]) == expected == seen["queued"]  # what the pod ran, field for field
    assert seen["json before"] is False and seen["json toggled"] is True and seen["json after"] == "hidden"
    assert seen["saved"] == "saved preset e2e rows (3 LoRAs)" and seen["on the pod"] == expected  # the preset round-trips
    assert seen["from preset"] == seen["edited"] and json.loads(seen["text from preset"]) == expected
    applied_b, applied, off = seen["run"]
    assert applied_b[1].startswith(f"applied {kohya_b}") and "model 0.7, clip 1" in applied_b[1]
    assert applied[1].startswith(f"applied {kohya}") and "model 1, clip 0.3" in applied[1]
    assert off[1] == f"off {peft}"
    assert seen["reloaded"] == seen["edited"]
    sha = {name: hashlib.sha256((editor.pod.models_dir("loras") / name).read_bytes()).hexdigest() for name in (kohya_b, LORA_FILES["kohya"])}
    assert seen["row details"][0].startswith(f"sha256 {sha[kohya_b]} (AutoV2 {sha[kohya_b][:10].upper()})")
    assert "trigger words: zwx" in seen["row details"] and any(line.startswith("ss_") for line in seen["row details"])
    details = [text for cls, text in seen["file details"] if cls == "lora-bridge-detail"]
    assert details[0].startswith(f"sha256 {sha[LORA_FILES['kohya']]}") and "trigger words: ohwx" in details
    assert seen["tags"] == [["ohwx", "true"]] and seen["tags off"] == [["ohwx", "false"]]  # Load LoRA File's pick, before any run
    assert seen["prompt"] == [["", "a portrait"]]  # the tag that was turned off stayed out of the prompt
    assert (tmp_path / "stack-editor.png").stat().st_size > 10_000


STATUS = "(document.querySelector('.lora-bridge-status')?.textContent ?? '')"


def section(name: str) -> str:
    return f"(document.querySelector('.lora-bridge-counters[data-testid=\"{name}\"]')?.textContent ?? '')"


async def click(page: Browser, selector: str) -> None:
    await page.evaluate(f"document.querySelector('{selector}').click()")


async def sidebar(page: Browser, editor: Editor, source: str) -> dict:
    seen: dict = {}
    await open_editor(page, editor)
    await page.evaluate("app.extensionManager.setting.set('LoraBridge.PodToken', '')")
    await page.evaluate("app.extensionManager.command.execute('Workspace.ToggleSidebarTab.lora-bridge')")
    seen["no token"] = await page.wait_for(f"{STATUS}.includes('token') && {STATUS}", timeout=30)
    await page.evaluate(f"app.extensionManager.setting.set('LoraBridge.PodToken', {json.dumps(POD_TOKEN)})")
    await click(page, ".lora-bridge-refresh")
    seen["disk"] = await page.wait_for(section("disk"), timeout=30)
    await page.evaluate(f"document.querySelector('.lora-bridge-source').value = {json.dumps(source)};"
                        "document.querySelector('.lora-bridge-memory').checked = true")
    await click(page, ".lora-bridge-prefetch")
    seen["prefetched"] = await page.wait_for(f"{STATUS}.startsWith('fetched') && {STATUS}", timeout=60)
    seen["memory after prefetch"] = await page.wait_for(f"{section('memory')}.includes('sidebar') && {section('memory')}")
    await click(page, ".lora-bridge-clear-memory")
    seen["cleared"] = await page.wait_for(f"{STATUS}.startsWith('cleared') && {STATUS}", timeout=30)
    seen["memory after clear"] = await page.wait_for(f"{section('memory')}.startsWith('Memory cache0 files') && {section('memory')}")
    return seen


def test_the_sidebar_shows_the_pods_caches_prefetches_and_clears(editor: Editor, file_server, tmp_path: Path) -> None:
    data = cached_lora(LoraSpec(layout="kohya", seed=4242, output_name="sidebar")).read_bytes()
    file_server.add("/sidebar.safetensors", data)

    seen = in_browser(tmp_path, sidebar, editor, file_server.url("/sidebar.safetensors"))
    assert seen["no token"] == "the pod needs its token: set it in Settings → LoRA Bridge"
    assert seen["disk"].startswith("Disk cache") and "hit rate" in seen["disk"]
    assert seen["prefetched"] == f"fetched sidebar.safetensors (sd15, {len(data) / 1048576:.1f} MB)"
    assert "sidebar" in seen["memory after prefetch"]
    assert re.fullmatch(r"cleared [1-9]\d* from memory", seen["cleared"]) and "sidebar" not in seen["memory after clear"]
    request = urllib.request.Request(f"{editor.url}/lora_bridge/cache", headers={"Authorization": f"Bearer {POD_TOKEN}"})
    with urllib.request.urlopen(request) as resp:
        assert json.load(resp)["memory"]["entries"] == 0  # the pod's own view agrees


def test_a_failing_fetch_says_it_retries_and_why_in_words(editor: Editor, tmp_path: Path) -> None:
    graph = txt2img(steps=2, seed=78)
    graph["9101"] = {"class_type": "LoraBridgeFetch", "inputs": {"source": f"http://127.0.0.1:{free_port()}/gone.safetensors"}}
    graph["9102"] = {"class_type": "LoraBridgeApply", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora": ["9101", 0], "strength_model": 1.0, "strength_clip": 1.0,
        "on_mismatch": "error", "mode": "merge"}}
    graph["3"]["inputs"]["model"] = ["9102", 0]

    async def drive() -> dict:
        async with Browser(tmp_path / "profile") as page:
            await open_editor(page, editor)
            await page.evaluate("window.seen = {texts: [], errors: []};"
                                "comfyAPI.api.api.addEventListener('progress_text', (e) => seen.texts.push(e.detail));"
                                "comfyAPI.api.api.addEventListener('execution_error', (e) => seen.errors.push(e.detail))")
            await page.evaluate(f"app.loadApiJson({json.dumps(graph)}, 'failing-fetch.json')")
            await run_from_button(page)
            await page.wait_for("seen.errors.length", timeout=120)
            return await page.evaluate("seen")

    seen = asyncio.run(drive())
    texts = [t["text"] for t in seen["texts"] if str(t.get("nodeId")) == "9101"]
    assert [t.split(" in ")[0] for t in texts] == ["retrying (1 of 3)", "retrying (2 of 3)", "retrying (3 of 3)"], seen
    assert all(t.endswith(": host unreachable (connection refused)") for t in texts)
    (error,) = seen["errors"]
    message = error["exception_message"].strip()
    assert error["node_id"] == "9101" and message.startswith("Fetch LoRA (Bridge): reaching http://127.0.0.1:")  # as users see it
    assert message.endswith("failed after 4 attempts: host unreachable (connection refused)") and "Error" not in message
