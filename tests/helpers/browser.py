"""A real browser for the web page tests: Debian's headless Chromium driven by Selenium through
the system chromedriver, recording every network request the page makes; and the steps every
page test takes (open the page and give it the key, send a message and wait for the reply).

Missing Chromium is a failure, never a skip: the page is only tested in a browser.
`scripts/install-test-browser` (the first step of the test command) installs both.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

INSTALL = "scripts/install-test-browser (apt-get install -y chromium chromium-driver)"
WAIT_S = 20  # the longest wait for the page to reach a state (a metrics poll is every 2 s)


def _system_binary(name: str) -> str:
    path = shutil.which(name)
    assert path, (
        f"the web page tests need Debian's headless Chromium: `{name}` is not on PATH; "
        f"install it with `{INSTALL}` (as root, or with sudo)"
    )
    return path


@contextmanager
def headless_chromium() -> Iterator:
    """A Selenium Chrome driver on the system chromium and chromedriver (never a downloaded
    one), with the performance log on, so `requested_urls` can list the page's requests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _system_binary("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-extensions",
        "--disable-sync",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_system_binary("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver) -> list[str]:
    """The URL of every request the browser sent since the last call (the log is drained)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_messages(driver) -> list[str]:
    """The browser console's messages since the last call (CSP violations are reported here)."""
    return [entry["message"] for entry in driver.get_log("browser")]


def wait_for(driver, condition, what: str):
    """`condition(driver)` once it is true; fails after `WAIT_S` naming `what`."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
        condition, message=f"the page never showed {what}"
    )


def open_page(driver, base_url: str, key: str, model: str) -> None:
    """Load the page in a fresh session: it says a key is needed, takes `key`, and shows the
    model's name (read from the API with the key)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    notice = driver.find_element(By.ID, "notice")
    wait_for(driver, lambda d: notice.is_displayed() and "API key" in notice.text, "the key ask")
    driver.find_element(By.ID, "api-key").send_keys(key)
    driver.find_element(By.ID, "key-save").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "model-name").text == model, "the model")
    assert not notice.is_displayed()


def send(driver, text: str):
    """Send `text` from the page's chat; the element of the finished reply."""
    from selenium.webdriver.common.by import By

    replies = "#messages li.assistant"
    count = len(driver.find_elements(By.CSS_SELECTOR, replies))
    driver.find_element(By.ID, "message").send_keys(text)
    driver.find_element(By.ID, "send").click()
    wait_for(
        driver,
        lambda d: (
            len(items := d.find_elements(By.CSS_SELECTOR, replies)) > count
            and items[-1].get_attribute("data-state") in ("done", "error")
        ),
        "a finished reply",
    )
    reply = driver.find_elements(By.CSS_SELECTOR, replies)[-1]
    assert reply.get_attribute("data-state") == "done", reply.text
    return reply


def text_content(driver, element) -> str:
    """The element's exact text (WebDriver's `.text` collapses whitespace)."""
    return driver.execute_script("return arguments[0].textContent", element)
