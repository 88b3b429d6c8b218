"""The API docs render in a real headless Chromium with every request off this machine refused: Swagger UI and ReDoc
come from the server, not from a CDN, and work with API_KEYS set (their files are open, as the documents are)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.paths import REPO
from tests.support.server import ApiServer

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: scripts/setup.sh")

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "bench" / "results" / "ui"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# Generous: a 2-core machine running ComfyUI beside the browser.
TIMEOUT_MS = 120_000
playwright_api.expect.set_options(timeout=TIMEOUT_MS)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Chromium is not installed (scripts/install-test-services.sh installs it as root)"
)


@pytest.fixture(scope="module")
def docs_server(make_server: Callable[..., ApiServer]) -> ApiServer:
    return make_server("docs", API_KEYS="docs-key").start()


@pytest.fixture(scope="module")
def offline_page(docs_server: ApiServer) -> Iterator[tuple[playwright_api.Page, list[str]]]:
    """A page whose requests to any host but loopback are aborted; the list of those it aborted."""
    blocked: list[str] = []

    def only_loopback(route: playwright_api.Route) -> None:
        if urlsplit(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.route("**/*", only_loopback)
        yield page, blocked
        browser.close()


def screenshot(page: playwright_api.Page, tmp_path: Path, name: str) -> None:
    """Saved in the test's folder and in bench/results/ui/, where the screenshots are kept."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=False)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / name)


def test_swagger_ui_renders_the_routes_without_a_cdn(
    docs_server: ApiServer, offline_page: tuple[playwright_api.Page, list[str]], tmp_path: Path
) -> None:
    page, blocked = offline_page
    page.goto(f"{docs_server.url}/docs")
    operation = page.locator(".opblock-summary", has=page.locator("[data-path='/prompt']")).filter(has_text="POST")
    playwright_api.expect(operation.first).to_be_visible()
    playwright_api.expect(page.locator(".information-container .title")).to_contain_text("ComfyUI API")
    # Swagger UI reads the OpenAPI 3.1 document without complaint.
    playwright_api.expect(page.locator(".version-stamp")).to_contain_text("OAS 3.1")
    playwright_api.expect(page.locator(".errors-wrapper")).to_have_count(0)
    screenshot(page, tmp_path, "docs-swagger.png")
    assert blocked == []


def test_redoc_renders_the_routes_without_a_cdn(
    docs_server: ApiServer, offline_page: tuple[playwright_api.Page, list[str]], tmp_path: Path
) -> None:
    page, blocked = offline_page
    page.goto(f"{docs_server.url}/redoc")
    playwright_api.expect(page.locator("h1").first).to_contain_text("ComfyUI API")
    playwright_api.expect(page.get_by_text("/prompt/{id}/events").first).to_be_attached()
    screenshot(page, tmp_path, "docs-redoc.png")
    # ReDoc's "API docs by Redocly" badge links its logo from its makers' site: without it, the badge shows no logo.
    assert [url for url in blocked if not url.endswith("/redoc/logo-mini.svg")] == []


def test_the_docs_files_are_open_and_the_data_is_not(docs_server: ApiServer) -> None:
    for path in ("/docs", "/redoc", "/docs/json", "/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        assert docs_server.http.get(path).status_code == 200, path
    assert httpx.get(f"{docs_server.url}/ui/jobs").status_code == 401
