"""The dashboard in a real browser (headless chromium + Selenium): a real worker in a thread on sqlite://, the
dashboard served by uvicorn on a free port. The pages render with the worker running, a task sent from
the test shows up and turns SUCCESS without a reload (its page links its trace), the re-send action works
with the token and is refused without it, and beyond localhost the login form opens the pages.

The browser is Debian's ``chromium`` and ``chromium-driver`` (``scripts/services install``), found at
``$CHROMIUM`` / ``$CHROMEDRIVER`` or /usr/bin; nothing is downloaded. Without them the tests are skipped,
and fail in CI (``CI=true``).

Set ``MACHINERY_DASHBOARD_SCREENSHOT=path.png`` to save the overview as the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="needs the dashboard extra: pip install 'machinery-core[dashboard]'")
pytest.importorskip("uvicorn", reason="needs the dashboard extra: pip install 'machinery-core[dashboard]'")
pytest.importorskip(
    "selenium", reason="the browser tests drive chromium with Selenium (dev dependency group)"
)

from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from machinery import Machinery, Signature
from machinery.config import Config
from machinery.dashboard.server import settings_for
from machinery.dashboard.web import DashboardSettings, create_app
from machinery.testing import server_unavailable

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")


def browser_paths() -> tuple[str, str]:
    """The chromium and chromedriver executables; a failure in CI, a skip elsewhere, when missing."""
    chromium, driver = shutil.which(CHROMIUM), shutil.which(CHROMEDRIVER)
    if not chromium or not driver:
        server_unavailable(
            f"the dashboard's browser tests need chromium ({CHROMIUM}) and chromedriver ({CHROMEDRIVER}): "
            "scripts/services install (apt-get install chromium chromium-driver)"
        )
    return chromium, driver


@contextmanager
def chrome(width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A headless chromium under Selenium, with its own profile directory."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser_paths()
    with tempfile.TemporaryDirectory(prefix="machinery-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in (
            "--headless=new",
            "--no-sandbox",  # root in CI containers
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
        ):
            options.add_argument(arg)
        browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
        try:
            yield browser
        finally:
            browser.quit()


@contextmanager
def serve_dashboard(app: Machinery, settings: DashboardSettings) -> Iterator[str]:
    """The dashboard served by uvicorn in a thread on a free port of 127.0.0.1; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(app, settings), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    started = threading.Event()

    def run() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            started.set()

    thread = threading.Thread(target=run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    _wait_until(lambda: server.started or started.is_set(), 10.0)
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10.0)
        sock.close()


def _wait_until(check: Any, timeout: float) -> None:
    ready = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        ready.wait(0.02)  # uvicorn has no hook for "listening" other than its started flag


@contextmanager
def running_worker(app: Machinery, concurrency: int = 2) -> Iterator[None]:
    """A real worker of ``app`` in a thread, until the block ends."""
    worker = app.worker(concurrency=concurrency)
    thread = worker.launch_async()
    try:
        yield
    finally:
        worker.quit()
        thread.join(15.0)
        thread.raise_error()


# ------------------------------------------------------------------------------------------ the tests

TOKEN = "browser-t0ken"
TRACE_URL = "http://jaeger.example:16686/trace/{trace_id}"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
WAIT = 20.0  # seconds a page may take to show what the test waits for (refreshes every 0.3 s)


class Tasks:
    """The test's tasks: ``hold`` runs until released; ``flaky`` fails until ``healed``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.healed = threading.Event()

    def register(self, app: Machinery) -> None:
        def add(a: int, b: int) -> int:
            return a + b

        def hold(x: int) -> int:
            if not self.release.wait(WAIT):
                raise TimeoutError("the test never released the task")
            return x * 10

        def flaky(x: int) -> int:
            if not self.healed.is_set():
                raise RuntimeError("flaky: not healed yet")
            return x

        app.register_tasks({"add": add, "hold": hold, "flaky": flaky})


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Machinery, Tasks, str, Any]]:
    browser_paths()  # before starting anything
    db = tmp_path_factory.mktemp("dashboard") / "machinery.db"
    config = Config()
    config.broker = config.result_backend = f"sqlite:///{db}"
    config.events.record_args = True  # the re-send action needs the recorded message
    config.worker.heartbeat_interval = 0.5
    app = Machinery(config)
    tasks = Tasks()
    tasks.register(app)
    settings = DashboardSettings(token=TOKEN, refresh=0.3, trace_url=TRACE_URL)
    with running_worker(app), serve_dashboard(app, settings) as url, chrome() as browser:
        yield app, tasks, url, browser
    app.close()


def wait_for(browser: Any, what: str, check: Any) -> Any:
    return WebDriverWait(browser, WAIT, poll_frequency=0.05).until(lambda b: check(b), message=what)


def text_of(browser: Any, css: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def test_pages_render_with_a_worker_running(live: tuple[Machinery, Tasks, str, Any]) -> None:
    _, _, url, browser = live
    browser.get(url + "/")
    wait_for(browser, "a live worker", lambda b: "live" in b.execute_script(_text, "table.workers tbody"))
    assert "machinery_tasks" in text_of(browser, "table.queues")
    for path, heading in (("/tasks", "Recent tasks"), ("/dead-letters", "Dead letters")):
        browser.get(url + path)
        assert browser.find_element(By.TAG_NAME, "h2").text == heading
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, "the pages load without console errors (scripts, styles, CSP)"


def test_a_sent_task_appears_and_turns_success_without_a_reload(
    live: tuple[Machinery, Tasks, str, Any],
) -> None:
    app, tasks, url, browser = live
    browser.get(url + "/")
    browser.execute_script("window.notReloaded = true;")
    # the W3C header a traced producer sets (machinery.tracing); the worker records its trace id
    traced = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    result = app.send_task(Signature("hold", args=[4], headers=traced))
    row = f'tr[data-uuid="{result.uuid}"]'
    wait_for(browser, "the task running", lambda b: "STARTED" in b.execute_script(_text, row))
    tasks.release.set()
    wait_for(browser, "the task succeeded", lambda b: "SUCCESS" in b.execute_script(_text, row))
    assert browser.execute_script("return window.notReloaded === true;"), "the page was reloaded"
    assert result.get(timeout=5) == 40

    assert browser.execute_script(_click, f"{row} a"), "the task's link"
    link = wait_for(
        browser, "the trace link", lambda b: next(iter(b.find_elements(By.CSS_SELECTOR, "a.trace")), False)
    )
    assert link.get_attribute("href") == TRACE_URL.replace("{trace_id}", TRACE_ID)
    assert "40" in text_of(browser, "code.result")


#: the text of the element a CSS selector finds, "" while there is none (the live part is replaced as a whole)
_text = "var e = document.querySelector(arguments[0]); return e ? e.innerText : '';"
_click = "var e = document.querySelector(arguments[0]); if (e) { e.click(); } return !!e;"


def test_resend_works_with_the_token_and_is_refused_without(live: tuple[Machinery, Tasks, str, Any]) -> None:
    app, tasks, url, browser = live
    result = app.send_task(Signature("flaky", args=[7]))
    browser.get(f"{url}/tasks/{result.uuid}")
    wait_for(browser, "the task failed", lambda b: "FAILURE" in b.execute_script(_text, "#task-state"))
    # record_args is on: the arguments show once the worker's events are written (a moment after the state)
    wait_for(browser, "the arguments", lambda b: "7" in b.execute_script(_text, "code.args"))
    tasks.healed.set()

    browser.find_element(By.ID, "dashboard-token").clear()
    _click_resend(browser)
    assert "refused: the token is missing or wrong" in text_of(browser, "#message")
    state = app.backend.get_state(result.uuid)
    assert state is not None and state.is_failure, "a refused re-send sent nothing"

    browser.get(f"{url}/tasks/{result.uuid}")
    browser.find_element(By.ID, "dashboard-token").send_keys(TOKEN)
    _click_resend(browser)
    assert f"re-sent failed task flaky {result.uuid}" in text_of(browser, "#message")
    browser.find_element(By.ID, "back").click()
    wait_for(
        browser, "the re-sent task succeeded", lambda b: "SUCCESS" in b.execute_script(_text, "#task-state")
    )
    assert "7" in text_of(browser, "code.result")
    screenshot = os.environ.get("MACHINERY_DASHBOARD_SCREENSHOT")
    if screenshot:
        save_screenshot(app, url, browser, Path(screenshot))


def save_screenshot(app: Machinery, url: str, browser: Any, path: Path) -> None:
    """The overview after a few more tasks (one failing), as the README shows it."""
    results = [app.send_task(Signature("add", args=[n, n + 1])) for n in range(3)]
    failing = app.send_task(Signature("add", args=[1, "two"]))
    for result in results:
        result.get(timeout=10)
    browser.get(url + "/")
    row = f'tr[data-uuid="{failing.uuid}"]'
    wait_for(browser, "the failing task", lambda b: "FAILURE" in b.execute_script(_text, row))
    path.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(path))


def _click_resend(browser: Any) -> None:
    """Click the Re-send button as a user would (the page's script adds the token box's value), in one
    script: the live part is replaced every refresh, so a found element may be gone by the click."""
    wait_for(browser, "a Re-send button", lambda b: b.execute_script(_click, "#live form.action button"))
    wait_for(browser, "the action's answer", lambda b: bool(b.find_elements(By.ID, "message")))


def test_beyond_localhost_the_login_form_opens_the_pages(live: tuple[Machinery, Tasks, str, Any]) -> None:
    """The settings of a dashboard listening beyond localhost (served on 127.0.0.1 here): every page needs
    the token; the login form's cookie opens them and the token box is filled for the actions."""
    app, _, _, browser = live
    with serve_dashboard(app, settings_for("0.0.0.0", TOKEN, refresh=0.3)) as url:
        browser.get(url + "/tasks")
        assert "/login?next=" in browser.current_url
        assert "sqlite" not in browser.page_source, "the login page tells nothing about the app"
        browser.find_element(By.CSS_SELECTOR, "form.login input[name=token]").send_keys("wrong")
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait_for(browser, "the wrong-token notice", lambda b: "Wrong token." in b.page_source)
        browser.find_element(By.CSS_SELECTOR, "form.login input[name=token]").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait_for(browser, "the tasks page", lambda b: b.current_url == url + "/tasks")
        assert browser.find_element(By.TAG_NAME, "h2").text == "Recent tasks"
        assert browser.find_element(By.ID, "dashboard-token").get_attribute("value") == TOKEN
