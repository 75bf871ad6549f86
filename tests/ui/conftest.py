"""A real browser for the dashboard's tests: Debian's headless Chromium, driven by selenium
through Debian's chromedriver.

Without Chromium the tests skip with the reason; with ``MODELPLANE_TEST_REQUIRE_BROWSER=1`` (CI
sets it in .ci/run) that reason is a failure instead. Screenshots go to ``tests/output/`` (kept
as CI artefacts, ignored by git).
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import make_box  # noqa: F401  (the fixture)

OUTPUT = Path(__file__).resolve().parent.parent / "output"
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
# Chromium on a closed network: no sandbox (root), and none of its own background traffic
# (component updates, sync, QUIC probes) that would retry against the network many times.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
)


def browser_missing() -> str | None:
    """Why no browser can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not any(Path(p).exists() for p in CHROMIUM):
        return "no Chromium (.ci/setup installs Debian's chromium)"
    if not Path(CHROMEDRIVER).exists():
        return "no chromedriver (.ci/setup installs Debian's chromium-driver)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("MODELPLANE_TEST_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MODELPLANE_TEST_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh headless Chromium (its own profile), 1280x900; ``browser.set_window_size`` to
    try a phone's width."""
    reason = browser_missing()
    if reason:
        _skip_or_fail(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="modelplane-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = next(p for p in CHROMIUM if Path(p).exists())
    for flag in (*FLAGS, f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    # an explicit driver path: selenium must not look for (download) a driver of its own
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        if getattr(request.node, "rep_call_failed", False):
            save_screenshot(driver, f"failed-{request.node.name}")
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def save_screenshot(driver: Any, name: str) -> Path:
    """The whole page (not only the window), from the top, as ``tests/output/NAME.png``."""
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / f"{name}.png"
    driver.execute_script("window.scrollTo(0, 0)")
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Lets the fixture know the test failed (a screenshot of the failure is kept)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call_failed = report.failed  # type: ignore[attr-defined]
