"""The dashboard at ``/ui`` in a real headless Chromium against a real ``modelplane run``.

Fake backends serve the models; a static GPU list in the Node gives the page GPU bars with
claims. The page must show the models, follow a wake by request from Starting to Ready without
a reload, unload a model with its button, show a broken manifest as Stale with its position,
follow a backend's log, list the request, and fit a phone's width. Screenshots:
``tests/output/dashboard.png`` and ``tests/output/dashboard-phone.png``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import MakeBox, node_doc
from tests.ui.conftest import save_screenshot

GiB = 2**30
WAIT = 30.0


def _box_docs() -> dict[str, str]:
    gpus = [{"index": 0, "memory": "24GiB", "name": "Test GPU 24G"}]
    return {
        "node.yaml": node_doc(gpus=gpus, resync="2s"),
        "engine.yaml": fake_engine_doc("fake")
        + "---\n"
        + fake_engine_doc("slow", "--listen-delay", "3"),
        "chat.yaml": model_doc("chat", pin=True, vram="6GiB", aliases=["gpt-4o-mini"]),
        "coder.yaml": model_doc("coder", engine="slow", stayWarm="10m", vram="9GiB"),
        "embed.yaml": model_doc("embed", stayWarm="0", vram="2GiB", priority="batch"),
    }


def _row_text(driver: Any, model: str, column: str) -> str:
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(
        By.CSS_SELECTOR, f'tr[data-model="{model}"] td[data-col="{column}"]'
    )
    return cells[0].text if cells else ""


def _wait(driver: Any, check: Any, what: str, timeout: float = WAIT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: check(d), message=what
    )


def _phase(driver: Any, model: str) -> str:
    return _row_text(driver, model, "phase").split("\n")[0]


def test_dashboard_live(make_box: MakeBox, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    box = make_box(_box_docs())
    svc = box.start()
    svc.wait_phase("chat", "Ready")
    driver = browser
    driver.get(svc.url + "/")  # the root sends a browser to the dashboard
    assert driver.current_url.endswith("/ui/")

    # Every model, with its phase: the pinned one Ready on GPU 0, the others asleep.
    _wait(driver, lambda d: _phase(d, "chat") == "Ready", "chat Ready")
    assert _phase(driver, "coder") == "Asleep" and _phase(driver, "embed") == "Asleep"
    assert "pinned" in _row_text(driver, "chat", "model")
    assert "gpt-4o-mini" in _row_text(driver, "chat", "model")  # its alias
    assert "batch" in _row_text(driver, "embed", "model")  # a priority other than normal
    assert _row_text(driver, "chat", "gpu") == "0"
    assert _row_text(driver, "chat", "vram") == "6 GiB"
    assert "never (pinned)" in _row_text(driver, "chat", "until")
    gpus = driver.find_element(By.ID, "gpus").text
    assert "GPU 0" in gpus and "Test GPU 24G" in gpus and "chat 6 GiB" in gpus
    _wait(driver, lambda d: d.find_element(By.ID, "live-text").text == "live", "events live")

    # A request wakes coder: the row turns Starting, then Ready, without a reload.
    marker = driver.execute_script("window.__same_page = 1; return 1")
    answer: dict[str, Any] = {}

    def ask() -> None:
        with httpx.Client(timeout=60) as http:
            answer["response"] = http.post(
                svc.url + "/v1/chat/completions",
                json={"model": "coder", "messages": [{"role": "user", "content": "hi"}]},
            )

    asker = threading.Thread(target=ask)
    asker.start()
    _wait(driver, lambda d: _phase(d, "coder") == "Starting", "coder Starting")
    _wait(driver, lambda d: _phase(d, "coder") == "Ready", "coder Ready")
    shown = time.time()
    started = box.events("coder", ("Started",))[-1]["time"]
    print(f"dashboard: Ready shown {1000 * (shown - started):.0f} ms after the Started event")
    asker.join(WAIT)
    assert answer["response"].status_code == 200, answer["response"].text
    assert driver.execute_script("return window.__same_page") == marker  # no reload happened
    _wait(driver, lambda d: "in 9m" in _row_text(d, "coder", "until"), "coder unloads in 9m…")
    assert _row_text(driver, "coder", "gpu") == "0"

    # The request log shows it; the event stream shows the start.
    _wait(
        driver,
        lambda d: "coder" in d.find_element(By.CSS_SELECTOR, "#requests tbody").text,
        "the request in the table",
    )
    request_row = driver.find_element(By.CSS_SELECTOR, "#requests tbody tr").text
    assert "127.0.0.1" in request_row and "200" in request_row, request_row
    _wait(driver, lambda d: "Started" in d.find_element(By.ID, "events").text, "Started event")

    # The backend log of the model picked in the list, live.
    driver.find_element(By.CSS_SELECTOR, 'button[data-action="logs"][data-model="coder"]').click()
    _wait(driver, lambda d: "--- modelplane:" in d.find_element(By.ID, "log").text, "coder's log")
    time.sleep(0.3)  # the page settles (bars, countdowns) for the screenshot
    save_screenshot(driver, "dashboard")

    # Unload with the button: the row goes Asleep, and the service says so too.
    driver.find_element(By.CSS_SELECTOR, 'button[data-action="unload"][data-model="coder"]').click()
    _wait(driver, lambda d: _phase(d, "coder") == "Asleep", "coder Asleep after Unload")
    assert svc.model("coder")["phase"] == "Asleep"
    unload = driver.find_element(By.CSS_SELECTOR, 'button[data-action="unload"][data-model="chat"]')
    assert not unload.is_enabled()  # pinned: never unloaded

    # A broken manifest: Stale, with the error's file:line:col on the page.
    box.manifests.write(
        "coder.yaml", model_doc("coder", engine="slow", stayWarm="10m", vram="9GiB", stayWram="1m")
    )
    _wait(
        driver,
        lambda d: "coder.yaml:" in d.find_element(By.ID, "alerts").text,
        "the manifest error on the page",
    )
    alerts = driver.find_element(By.ID, "alerts").text
    assert "stayWram" in alerts and _has_position(alerts, "coder.yaml"), alerts
    _wait(driver, lambda d: "Stale" in _row_text(d, "coder", "model"), "coder tagged Stale")

    # A phone's width: the rows stack as cards, nothing sticks out sideways.
    driver.set_window_size(390, 844)
    time.sleep(0.5)
    assert driver.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1"
    ), "the page is wider than a phone's screen"
    assert driver.find_element(By.CSS_SELECTOR, 'tr[data-model="chat"]').is_displayed()
    save_screenshot(driver, "dashboard-phone")
    assert not [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"], driver.get_log(
        "browser"
    )


def _has_position(text: str, file: str) -> bool:
    """``file:LINE:COL`` somewhere in ``text``."""
    import re

    return re.search(re.escape(file) + r":\d+:\d+", text) is not None


def test_dashboard_asks_for_the_admin_key(make_box: MakeBox, browser: Any) -> None:
    """A Node with apiKeys: the page asks for the key, then shows the models; a wrong key is
    asked for again."""
    from selenium.webdriver.common.by import By

    from tests.service.conftest import hash_key

    key = "sk-dashboard-admin"
    box = make_box(
        {
            "node.yaml": node_doc(apiKeys=[{"name": "admin", "sha256": hash_key(key)}]),
            "engine.yaml": fake_engine_doc("fake"),
            "m.yaml": model_doc("m", pin=True),
        },
        api_key=key,
    )
    svc = box.start()
    svc.wait_phase("m", "Ready")
    driver = browser
    driver.get(svc.url + "/ui/")
    dialog = _wait(driver, lambda d: d.find_element(By.ID, "key-dialog"), "the key dialog")
    _wait(driver, lambda d: dialog.get_attribute("open") is not None, "the dialog open")
    assert not driver.find_elements(By.CSS_SELECTOR, 'tr[data-model="m"]')  # nothing without it
    field = driver.find_element(By.ID, "key-input")
    field.send_keys("sk-wrong")
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    _wait(driver, lambda d: dialog.get_attribute("open") is not None, "asked again")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    _wait(driver, lambda d: _phase(d, "m") == "Ready", "m Ready with the key")
    _wait(driver, lambda d: d.find_element(By.ID, "live-text").text == "live", "events live")


def test_dashboard_files_are_served_without_a_key_and_data_needs_one(make_box: MakeBox) -> None:
    """Same auth as the admin API: the page's files hold no data; what it reads needs the key."""
    from tests.service.conftest import hash_key

    key = "sk-dash"
    box = make_box(
        {
            "node.yaml": node_doc(apiKeys=[{"name": "admin", "sha256": hash_key(key)}]),
            "engine.yaml": fake_engine_doc("fake"),
            "m.yaml": model_doc("m"),
        },
        api_key=key,
    )
    svc = box.start()
    with httpx.Client(base_url=svc.url, timeout=10) as http:
        page = http.get("/ui/")
        assert page.status_code == 200 and "<title>modelplane</title>" in page.text
        script = http.get("/ui/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert http.get("/api/status").status_code == 401
        assert http.get("/api/requests").status_code == 401
        authed = http.get("/api/status", headers={"authorization": f"Bearer {key}"})
        assert authed.status_code == 200
