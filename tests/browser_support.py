"""Drive the ``serve --ui`` page in headless Chromium (Debian's ``chromium`` + ``chromium-driver``) with Selenium.

Used by tests/test_ui.py and benchmarks/browser_page.py. Every HTTP request the page makes is recorded twice:
by the test server (an ASGI middleware: method, path, body) and by Chromium (DevTools performance log: every
URL the page asked for, including any that would go elsewhere).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser_missing() -> str | None:
    """Why the browser test cannot run here (``None`` when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} not found: install Debian's chromium and chromium-driver (.ci/run does)"
    return None


class Recorder:
    """ASGI middleware keeping (method, path, body) of every request."""

    def __init__(self, app: Any) -> None:
        self.app, self.requests = app, []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        entry = {"method": scope["method"], "path": scope["path"], "body": b""}
        self.requests.append(entry)

        async def recv() -> dict:
            msg = await receive()
            if msg["type"] == "http.request":
                entry["body"] += msg.get("body", b"")
            return msg

        await self.app(scope, recv, send)


def driver() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,820",
                "--no-first-run", "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def browser_requests(drv: Any) -> list[dict[str, Any]]:
    """Every request Chromium sent (DevTools ``Network.requestWillBeSent``): url, method, postData."""
    out = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            req = msg["params"]["request"]
            out.append({"url": req["url"], "method": req["method"], "postData": req.get("postData")})
    return out


def run_page(base_url: str, images: list[Path], *, screenshot: Path | None = None, timeout: float = 180,
             before: str | None = None, after: str | None = None, after_args: tuple = ()) -> dict:
    """Open ``{base_url}/ui/``, upload ``images``, wait for one result each; the page's state + requests + timings.

    ``before`` / ``after``: asynchronous scripts (Selenium's ``execute_async_script``: the callback is the last
    argument) run once the page is ready, before the upload / after the results (with ``after_args``); their
    answers come back as ``"before"`` / ``"after"``."""
    from selenium.webdriver.common.by import By

    drv = driver()
    try:
        t0 = time.perf_counter()
        drv.get(f"{base_url}/ui/")
        state = _wait(drv, "return window.__privsplit && (window.__privsplit.ready || window.__privsplit.error)", timeout)
        t_ready = time.perf_counter() - t0
        err = drv.execute_script("return window.__privsplit.error")
        if err:
            raise RuntimeError(f"page failed to load: {err}; console: {drv.get_log('browser')}")
        drv.set_script_timeout(timeout)
        out = {"before": drv.execute_async_script(before) if before else None}
        drv.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in images))
        n = len(images)
        _wait(drv, f"return window.__privsplit.results.length >= {n}", timeout)
        t_all = time.perf_counter() - t0
        out["after"] = drv.execute_async_script(after, *after_args) if after else None
        state = drv.execute_script("const s = window.__privsplit; return {results: s.results, timings: s.timings};")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            drv.save_screenshot(str(screenshot))
        return {**out, "results": state["results"], "page_timings_ms": state["timings"], "requests": browser_requests(drv),
                "seconds_to_ready": t_ready, "seconds_to_all_labels": t_all, "console": drv.get_log("browser")}
    finally:
        drv.quit()


def _wait(drv: Any, script: str, timeout: float) -> Any:
    end = time.time() + timeout
    while time.time() < end:
        value = drv.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"page did not satisfy `{script}` within {timeout} s; console: {drv.get_log('browser')}")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def have_node() -> bool:
    return shutil.which("node") is not None
