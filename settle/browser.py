"""Headless Chromium through WebDriver: Debian's chromium and the chromedriver built with it.

`deploy/stack.sh browser` (and `make up`) installs both from Debian's packages; nothing is
downloaded here (Selenium Manager never runs: the driver's path is given). The statement
page's browser test and `settle api screenshot` (used by `make demo`) drive them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from settlement.errors import SettleError

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# What a page may take to load and render (server-rendered, no scripts: well under a second).
PAGE_TIMEOUT_S = 30.0

# Headless, and quiet on the network: no update checks, sync, metrics or component downloads,
# so a page on 127.0.0.1 is the only thing the browser talks to.
_ARGUMENTS = (
    "--headless=new",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--metrics-recording-only",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--lang=en-US",
)


class BrowserMissing(SettleError):
    """Chromium or its driver is not installed."""


def browser_paths() -> tuple[Path, Path]:
    """(chromium, chromedriver), or BrowserMissing naming the command that installs them."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        raise BrowserMissing(
            f"{' and '.join(missing)} not found: `bash deploy/stack.sh browser` (or `make up`) "
            "installs Debian's chromium and chromium-driver")
    return CHROMIUM, CHROMEDRIVER


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium WebDriver session (selenium's `webdriver.Chrome`), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for argument in _ARGUMENTS:
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root (CI, containers)
        options.add_argument("--no-sandbox")
    service = Service(executable_path=str(driver), log_output=os.devnull)
    session = webdriver.Chrome(options=options, service=service)
    try:
        session.set_page_load_timeout(PAGE_TIMEOUT_S)
        yield session
    finally:
        session.quit()


def log_in(session: Any, base_url: str, key: str) -> None:
    """Open the statement page's login form and sign in with `key` (as a person would)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    session.get(f"{base_url.rstrip('/')}/statement")
    field = WebDriverWait(session, PAGE_TIMEOUT_S).until(
        expected_conditions.presence_of_element_located((By.NAME, "key")))
    field.clear()
    field.send_keys(key)
    submit(session, "form#login button[type=submit]")


def _left(before: Any) -> Callable[[Any], bool]:
    """A wait condition: the browser has left the document `before` belongs to. Mid-way,
    chromedriver may answer "Node with given id does not belong to the document" instead of
    a stale element reference: either means the old page is gone."""
    from selenium.common.exceptions import WebDriverException

    def gone(_session: Any) -> bool:
        try:
            before.is_enabled()
        except WebDriverException:
            return True
        return False

    return gone


def submit(session: Any, button_css: str) -> None:
    """Click the form button at `button_css` and wait for the page the form leads to.

    The page shown before the click is complete too: waiting for "complete" alone may read
    it again. The old page's `main` must go stale first (the browser left it).
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    before = session.find_element(By.CSS_SELECTOR, "main[data-page]")
    session.find_element(By.CSS_SELECTOR, button_css).click()
    WebDriverWait(session, PAGE_TIMEOUT_S).until(_left(before))
    WebDriverWait(session, PAGE_TIMEOUT_S).until(
        lambda s: s.execute_script("return document.readyState") == "complete"
        and s.find_elements(By.CSS_SELECTOR, "main[data-page]"))


def page_kind(session: Any) -> str:
    """Which page the browser shows: "login", "statement" or "error" (main's data-page)."""
    from selenium.webdriver.common.by import By

    return str(session.find_element(By.CSS_SELECTOR, "main[data-page]")
               .get_attribute("data-page"))


def page_error(session: Any) -> str:
    """The error message the page shows (login or error page), "" when none."""
    from selenium.webdriver.common.by import By

    found = session.find_elements(By.CSS_SELECTOR, "[role=alert]")
    return str(found[0].text) if found else ""


def full_page_screenshot(session: Any, out: Path, width: int = 1280) -> Path:
    """The whole page, not just the window, as a PNG at `out`."""
    height = int(session.execute_script(
        "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)"))
    session.set_window_size(width, max(600, min(height + 40, 12000)))
    out.parent.mkdir(parents=True, exist_ok=True)
    if not session.save_screenshot(str(out)):
        raise SettleError(f"the browser could not write a screenshot to {out}")
    return out


def statement_screenshot(base_url: str, key: str, out: Path, merchant: str | None = None,
                         width: int = 1280) -> Path:
    """Sign in to `base_url`'s statement page with `key` (for an analyst key, pick
    `merchant`), and save a full-page screenshot to `out`."""
    from urllib.parse import quote

    import httpx
    from selenium.common.exceptions import WebDriverException

    page = f"{base_url.rstrip('/')}/statement"
    try:  # a browser shows its own error page for a dead address: ask first
        httpx.get(page, timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise SettleError(f"{page} does not answer: {exc}") from exc
    try:
        with chromium(width=width) as session:
            log_in(session, base_url, key)
            if page_kind(session) != "statement":
                raise SettleError(f"the statement page refused the key: {page_error(session)}")
            if merchant:
                session.get(f"{base_url.rstrip('/')}/statement?merchant={quote(merchant)}")
                if page_kind(session) != "statement":
                    raise SettleError(f"the statement page refused merchant {merchant!r}: "
                                      f"{page_error(session)}")
            return full_page_screenshot(session, out, width)
    except WebDriverException as exc:  # unreachable server, no page, browser crash
        reason = (exc.msg or type(exc).__name__).splitlines()[0]
        raise SettleError(f"the browser could not show {page}: {reason}") from exc

