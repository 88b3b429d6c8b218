"""The dashboard at /ui in a real headless Chromium, in front of a real ComfyUI, with API_KEYS set: the page asks for
the key, then shows the server's state, a v2 job's live progress and preview, its output thumbnail, and a failed
job with its error."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.graphs import Graph, node, txt2img
from tests.support.paths import REPO
from tests.support.server import ApiServer

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: scripts/setup.sh")
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "bench" / "results" / "ui"
KEY = "dashboard-key"
# Generous: a 2-core machine running ComfyUI beside the browser.
TIMEOUT_MS = 120_000
expect.set_options(timeout=TIMEOUT_MS)
FAILURE = "the dashboard test's node failed on purpose"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Chromium is not installed (scripts/install-test-services.sh installs it as root)"
)

FAILING_NODE = f"""
class FailOnPurpose:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"image": ("IMAGE",)}}}}

    def run(self, image):
        raise RuntimeError({FAILURE!r})


NODE_CLASS_MAPPINGS = {{"FailOnPurpose": FailOnPurpose}}
"""


def failing() -> Graph:
    return {
        "1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
        "2": node("FailOnPurpose", image=["1", 0]),
        "3": node("SaveImage", images=["2", 0], filename_prefix="failing"),
    }


@pytest.fixture(scope="module")
def ui_server(make_server: Callable[..., ApiServer]) -> ApiServer:
    server = make_server("ui", API_KEYS=KEY)
    (server.base / "custom_nodes" / "fail_on_purpose.py").write_text(FAILING_NODE)
    return server.start()


@pytest.fixture(scope="module")
def page(ui_server: ApiServer) -> Iterator[playwright_api.Page]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def screenshot(page: playwright_api.Page, tmp_path: Path, name: str) -> None:
    """Saved in the test's folder and in bench/results/ui/, where the screenshots are kept."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / name)


def submit(server: ApiServer, graph: Graph) -> str:
    response = server.http.post("/api/v2/jobs", json={"workflow": graph}, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def job_card(page: playwright_api.Page, job_id: str) -> playwright_api.Locator:
    return page.locator(f".job[data-id='{job_id}']")


def test_the_page_asks_for_the_key_and_works_once_it_is_given(
    ui_server: ApiServer, page: playwright_api.Page, tmp_path: Path
) -> None:
    page.goto(f"{ui_server.url}/ui")
    expect(page.locator("#key-panel")).to_be_visible()
    expect(page.locator("#jobs-panel")).to_be_hidden()
    # The probes are open: the server's state shows before any key.
    expect(page.locator("#state-server")).to_have_attribute("data-state", "good")
    screenshot(page, tmp_path, "ui-key-prompt.png")

    page.fill("#key-input", "not-the-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-error")).to_contain_text("refused")
    expect(page.locator("#key-panel")).to_be_visible()

    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#jobs-panel")).to_be_visible()
    expect(page.locator("#key-panel")).to_be_hidden()
    expect(page.locator("#forget-key")).to_be_visible()
    stored: Any = page.evaluate("sessionStorage.getItem('comfyui-api.key')")
    assert stored == KEY


def test_a_job_shows_its_progress_preview_and_output(
    ui_server: ApiServer, page: playwright_api.Page, tmp_path: Path
) -> None:
    page.goto(f"{ui_server.url}/ui")  # the key is kept for the tab
    expect(page.locator("#jobs-panel")).to_be_visible()
    expect(page.locator("#state-ready")).to_have_attribute("data-state", "good")
    expect(page.locator("#state-comfy")).to_have_attribute("data-state", "good")

    # Enough sampler steps for several progress and preview events on a slow CPU.
    job_id = submit(ui_server, txt2img(128, 128, steps=30, seed=7))
    card = job_card(page, job_id)
    expect(card).to_have_attribute("data-status", "running")
    expect(card.locator(".progress-text")).to_contain_text("step")
    expect(card.locator(".preview img")).to_have_attribute("src", re.compile(r"^data:image/jpeg;base64,."))
    screenshot(page, tmp_path, "ui-running.png")

    expect(card).to_have_attribute("data-status", "succeeded")
    expect(card.locator(".bar")).to_have_attribute("aria-valuenow", "100")
    thumb = card.locator(".thumb img")
    expect(thumb).to_have_attribute("src", re.compile(r"^blob:"))
    assert thumb.evaluate("image => image.complete && image.naturalWidth") == 128
    expect(card.locator(".preview")).to_be_hidden()
    screenshot(page, tmp_path, "ui-succeeded.png")


def test_a_failed_job_shows_its_error(ui_server: ApiServer, page: playwright_api.Page, tmp_path: Path) -> None:
    page.goto(f"{ui_server.url}/ui")
    job_id = submit(ui_server, failing())
    card = job_card(page, job_id)
    expect(card).to_have_attribute("data-status", "failed")
    expect(card.locator(".job-error")).to_contain_text(FAILURE)
    expect(card.locator(".job-error")).to_contain_text("FailOnPurpose")

    page.click("#filters button[data-filter=failed]")
    expect(page.locator(".job")).to_have_count(1)
    expect(job_card(page, job_id)).to_be_visible()
    screenshot(page, tmp_path, "ui-failed.png")

    page.click("#filters button[data-filter=all]")
    expect(page.locator(".job")).to_have_count(2)
    screenshot(page, tmp_path, "ui-recent.png")


def test_the_jobs_route_is_behind_the_key_and_lists_both_kinds(ui_server: ApiServer) -> None:
    assert ui_server.http.get("/ui/jobs").status_code == 401
    assert ui_server.http.get("/ui").status_code == 200
    assert ui_server.http.get("/ui/static/app.js").status_code == 200
    auth = {"Authorization": f"Bearer {KEY}"}
    prompt = ui_server.http.post("/prompt", json={"prompt": txt2img(seed=11)}, headers=auth)
    assert prompt.status_code == 200, prompt.text
    jobs = ui_server.http.get("/ui/jobs", headers=auth).json()["jobs"]
    kinds = {job["kind"] for job in jobs}
    assert kinds == {"prompt", "v2"}
    assert all(job["events_url"].endswith(f"/{job['id']}/events") for job in jobs)
    failed = ui_server.http.get("/ui/jobs", params={"status": "failed"}, headers=auth).json()["jobs"]
    assert [job["status"] for job in failed] == ["failed"]
    assert ui_server.http.get("/ui/static/nothing.js").status_code == 401
