"""The console (``/ui``) in headless Chromium, against the real service and the run's real ComfyUI pod: sign in
with a key (a wrong one is refused), drop a LoRA into the library and see its family badge, render its strength
sweep, watch a job's progress to the end and its output in the gallery, see a training's loss curve, see what a
pod holds in memory and clear it. Screenshots are kept in the test's folder (printed)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from browser import Browser
from service_harness import KEY, Service
from support import CHECKPOINT
from test_training_e2e import TRAIN, dataset, zip_of

pytestmark = [pytest.mark.comfy, pytest.mark.bridge_logic]  # the bridge's own pages: first leg only
STEPS = 30  # the watched job's: long enough to see its bar move
PREVIEW = {"checkpoint": CHECKPOINT, "steps": 3, "cfg": 5.0, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def service(comfy, s3, tmp_path_factory):
    svc = Service([comfy.url], tmp_path_factory.mktemp("console-svc"), s3.endpoint,
                  env={"LORA_BRIDGE_PREVIEW_PARAMS": json.dumps(PREVIEW)}).start()
    yield svc
    svc.kill()


def fetch(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, final URL, body) without a session; redirects followed."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, resp.url, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, url, exc.read().decode()


def test_without_a_session_every_page_is_the_login_page_and_no_write_lands(service) -> None:
    status, lora = service.call("POST", "/v1/loras", {"name": "secret brand style", "source": "s3://loras/none.safetensors",
                                                      "family": "sd15", "brand_id": "acme"})
    assert status == 201, lora
    for path in ("/ui/loras", f"/ui/loras/{lora['id']}", "/ui/jobs", "/ui/pods", "/ui/trainings", "/ui/jobs/abc/outputs/0"):
        status, final, body = fetch(service.url + path)
        assert (status, final.split("?")[0]) == (200, service.url + "/ui/login"), path
        assert 'type="password"' in body and "secret brand style" not in body and "acme" not in body
    # a write from another site, even with the session cookie a browser would attach, is refused
    status, _, _ = fetch(f"{service.url}/ui/loras/{lora['id']}/delete", b"", {"Origin": "https://evil.example"})
    assert status == 403
    assert service.call("GET", f"/v1/loras/{lora['id']}")[0] == 200
    # an API key is no console session, and a guessed cookie is none either
    status, final, _ = fetch(service.url + "/ui/loras", headers={"Authorization": f"Bearer {KEY}",
                                                                 "Cookie": "lora_bridge_session=9999999999.00"})
    assert final.split("?")[0] == service.url + "/ui/login"
    service.call("DELETE", f"/v1/loras/{lora['id']}")


def test_hostile_input_to_the_console_is_refused_in_words_never_a_500(service) -> None:
    origin = {"Origin": service.url}
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(urllib.request.Request(service.url + "/ui/login", f"key={KEY}".encode(), origin)) as resp:
        assert resp.url == service.url + "/ui/loras"
    _, lora = service.call("POST", "/v1/loras", {"name": "target", "source": "s3://loras/none.safetensors", "family": "sd15"})
    hostile = ["", "x" * 5000, "../../etc/passwd", "%00", "<script>alert(1)</script>", "1e309", "-1", "ü" * 70]
    pages = ["/ui/loras?q={v}&family={v}&status={v}&tag={v}", "/ui/loras/{v}", "/ui/jobs?state={v}&lora={v}",
             "/ui/jobs/{v}", "/ui/jobs/{v}/outputs/{v}", "/ui/trainings/{v}", "/ui/loras/{v}/sweep"]
    forms = [(f"/ui/loras/{lora['id']}", "name={v}&owner_kind={v}&owner_id={v}&status={v}&tags={v}&trigger_word={v}"),
             (f"/ui/loras/{lora['id']}/sweep", "x={v}"), ("/ui/pods/{v}/cache/clear", "what={v}"),
             ("/ui/pods/0/cache/clear", "what={v}"), ("/ui/loras/upload", "file={v}")]
    seen = set()
    for value in hostile:
        v = urllib.parse.quote(value, safe="")
        requests = [urllib.request.Request(service.url + path.format(v=v)) for path in pages]
        requests += [urllib.request.Request(service.url + path.format(v=v), body.format(v=v).encode(), origin)
                     for path, body in forms]
        for request in requests:
            try:
                with opener.open(request) as resp:
                    status, body = resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read().decode()
            assert status < 500, (request.full_url, status, body[:300])
            assert "<script>alert(1)</script>" not in body  # shown, never run
            seen.add(status)
    assert {200, 400, 404} <= seen
    assert service.call("GET", f"/v1/loras/{lora['id']}")[1]["name"] == "target"  # no hostile edit landed
    service.call("DELETE", f"/v1/loras/{lora['id']}")


async def sign_in(page: Browser, url: str, key: str) -> None:
    await page.wait_for("document.readyState === 'complete' && !!document.querySelector('#key')")
    await page.evaluate(f"document.querySelector('#key').value = {json.dumps(key)}; "
                        "document.querySelector('form').requestSubmit(); true")


async def click(page: Browser, selector: str) -> None:
    await page.wait_for(f"!!document.querySelector({json.dumps(selector)})")
    await page.evaluate(f"document.querySelector({json.dumps(selector)}).click(); true")


def images_loaded(selector: str, n: int) -> str:
    return (f"(() => {{ const im = [...document.querySelectorAll({json.dumps(selector)})]; "
            f"return im.length === {n} && im.every(i => i.complete && i.naturalWidth > 0); }})()")


async def scenario(page: Browser, service: Service, lora_bytes: bytes, shots: Path) -> dict:
    seen: dict = {}
    await page.open(service.url + "/ui/")
    await sign_in(page, service.url, "not-the-key")
    seen["refused"] = await page.wait_for("document.querySelector('#login-problem')?.textContent")
    await sign_in(page, service.url, KEY)
    await page.wait_for("location.pathname === '/ui/loras' && !!document.querySelector('#drop')")

    # drop a LoRA file onto the library
    await page.evaluate(f"""(() => {{
        const bytes = Uint8Array.from(atob({json.dumps(base64.b64encode(lora_bytes).decode())}), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "ohwx-character.safetensors"));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {{dataTransfer: data, bubbles: true, cancelable: true}}));
        return true; }})()""")
    seen["uploaded"] = await page.wait_for("document.querySelector('#drop-result .done')?.textContent")
    seen["badge"] = await page.wait_for(
        "[...document.querySelectorAll('#lora-rows tr')].filter(r => r.textContent.includes('ohwx-character'))"
        ".map(r => r.querySelector('.badge').dataset.family)[0]")
    # a file that is no LoRA is refused in words, and nothing is added
    await page.evaluate("""(() => { const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(64)], "broken.safetensors"));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
        return true; })()""")
    seen["broken"] = await page.wait_for("document.querySelector('#drop-result .problem')?.textContent")
    await page.screenshot(shots / "library.png")

    # its detail: the file's facts, the edit form, then a strength sweep
    await click(page, "#lora-rows a")
    await page.wait_for("!!document.querySelector('#sweep button')")
    seen["coverage"] = await page.evaluate(
        "[...document.querySelectorAll('dt')].find(d => d.textContent === 'Key coverage')?.nextElementSibling.textContent")
    await page.evaluate("""(() => { const f = document.querySelector('form.edit');
        f.querySelector('[name=owner_kind]').value = 'character'; f.querySelector('[name=owner_id]').value = 'ohwx-42';
        f.querySelector('[name=trigger_word]').value = 'ohwx'; f.querySelector('[name=tags]').value = 'portrait, studio';
        f.requestSubmit(); return true; })()""")
    seen["saved"] = await page.wait_for("document.querySelector('#lora-fields .done') && "
                                        "document.querySelector('#lora-fields').textContent.includes('ohwx-42')")
    await click(page, "#sweep button")
    await page.wait_for(images_loaded(".strip img", 3), timeout=240)
    seen["sweep"] = await page.evaluate("[...document.querySelectorAll('.strip li')].map(li => li.dataset.strength)")
    seen["sweep_alts"] = await page.evaluate("[...document.querySelectorAll('.strip img')].map(i => i.alt)")
    seen["lora_id"] = await page.evaluate("location.pathname.split('/').pop()")
    await page.screenshot(shots / "lora.png")
    return seen


async def watch_job(page: Browser, service: Service, job_id: str, shots: Path) -> dict:
    """The job's page from queued to done: the progress bar's values as they change, then the gallery."""
    await page.open(f"{service.url}/ui/jobs/{job_id}")
    await page.wait_for("document.readyState === 'complete'")
    values: list[list[int]] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = await page.evaluate("(() => { const p = document.querySelector('.live progress');"
                                    "return p ? [p.value, p.max] : null; })()")
        if state is None:
            break
        if state not in values:
            values.append(state)
        await asyncio.sleep(0.05)
    await page.wait_for(images_loaded(".gallery img", 1), timeout=120)
    status = await page.evaluate("document.getElementById('job-status').textContent")
    await page.screenshot(shots / "job.png")
    return {"values": values, "status": status}


def test_the_console_shows_the_library_jobs_trainings_and_pods(service, comfy, weights, tmp_path) -> None:
    shots = tmp_path
    lora_bytes = Path(weights.loras["kohya"]).read_bytes()

    async def drive() -> dict:
        async with Browser(tmp_path / "profile") as page:
            seen = await scenario(page, service, lora_bytes, shots)
            # a job started through the API, watched in the console
            status, job = service.call("POST", "/v1/generations", {
                "template": "sd15_txt2img", "params": {**PREVIEW, "steps": STEPS, "width": 128, "height": 128, "prompt": "ohwx"},
                "loras": [{"lora_id": seen["lora_id"], "strength_model": 0.8}]})
            assert status == 202, job
            seen["job"] = await watch_job(page, service, job["id"], shots)
            seen["job_id"] = job["id"]
            await page.open(f"{service.url}/ui/jobs?lora=ohwx-character")
            seen["listed"] = await page.wait_for(f"document.querySelector('tr[data-job=\"{job['id']}\"]')?.dataset.status")
            # a training: its page shows the loss curve once it has run
            status, started = service.form("/v1/trainings/upload", {"request": json.dumps(TRAIN)},
                                           {"dataset": ("set.zip", zip_of(dataset(3)))})
            assert status == 202, started
            await page.open(f"{service.url}/ui/trainings/{started['id']}")
            seen["loss_points"] = await page.wait_for(
                "document.querySelector('#loss-chart polyline')?.getAttribute('points').split(' ').length", timeout=300)
            await page.wait_for(images_loaded("img.validation", 1), timeout=60)
            await page.screenshot(shots / "training.png")
            # the pod holds the LoRA in memory; clearing its memory cache empties it
            await page.open(f"{service.url}/ui/pods")
            seen["memory_before"] = await page.wait_for(
                "document.querySelectorAll('[data-cache=memory] li:not(.empty)').length")
            await page.screenshot(shots / "pods.png")
            await click(page, "[data-cache=memory] button")
            seen["memory_after"] = await page.wait_for(
                "document.querySelector('[data-cache=memory] li.empty') && "
                "document.querySelectorAll('[data-cache=memory] li:not(.empty)').length === 0")
            seen["console"] = [line for line in page.console if "Uncaught" in line]
            return seen

    seen = asyncio.run(drive())
    print(f"screenshots: {sorted(p.name for p in shots.glob('*.png'))} in {shots}")
    assert "not one of this bridge's API keys" in seen["refused"]
    assert "ohwx-character" in seen["uploaded"] and seen["badge"] == "sd15"
    assert seen["broken"].startswith("Not added: ") and "header" in seen["broken"], seen["broken"]
    assert [r["name"] for r in service.call("GET", "/v1/loras")[1]["loras"]].count("broken.safetensors") == 0
    assert seen["coverage"] and "modules" in seen["coverage"]
    lora = service.call("GET", f"/v1/loras/{seen['lora_id']}")[1]
    assert (lora["owner_kind"], lora["owner_id"], lora["trigger_word"], lora["tags"]) == ("character", "ohwx-42", "ohwx",
                                                                                         ["portrait", "studio"])
    assert lora["last_used"] is not None  # the sweep's jobs used it
    assert [r["id"] for r in service.call("GET", "/v1/loras?tag=studio")[1]["loras"]] == [lora["id"]]
    assert seen["sweep"] == ["0.0", "0.5", "1.0"] and all("strength" in alt for alt in seen["sweep_alts"])
    # the bar moved while the job ran, ended at its last step, and the gallery shows the job's output
    values = seen["job"]["values"]
    assert seen["job"]["status"] == "succeeded" and seen["listed"] == "succeeded"
    assert any(0 < v[0] < v[1] for v in values) and values[-1] == [STEPS, STEPS], values
    assert seen["loss_points"] == TRAIN["steps"]
    assert seen["memory_before"] >= 1 and seen["memory_after"]
    memory = [p["memory"]["entries"] for p in service.call("GET", "/v1/cache/stats")[1]["pods"]]
    assert memory == [0]
    assert seen["console"] == []
