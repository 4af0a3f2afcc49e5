"""`chuan serve`'s web page in a real browser (headless Chromium, see `helpers/browser.py`),
against a live server with a tiny chat model, an API key and a runs dir.

The chat: the page asks for the key, then streams a reply that equals what the API answers
for the same conversation (greedy), and sends the conversation so far with the next message.
The runs: the loss, learning-rate and tokens/s charts hold one point per metrics line, and
follow the file as lines are appended (a half-written line waits until it is complete). Every
request the browser makes goes to the server itself, and nothing breaks the page's
Content-Security-Policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest
from selenium.webdriver.common.by import By

from helpers.browser import (
    console_messages,
    headless_chromium,
    open_page,
    requested_urls,
    send,
    text_content,
    wait_for,
)
from helpers.serving import chat_model_dir, serving

KEY = "page-key"
NAME = "tiny-page"
SYSTEM = "Answer in one line."
MAX_TOKENS = 12
CHARTS = ("chart-loss", "chart-lr", "chart-tokens")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def metrics_lines(steps: range) -> str:
    return "".join(
        json.dumps({"step": s, "loss": 6 / s, "lr": 3e-4 * min(1, s / 4), "tokens_per_s": 900.0})
        + "\n"
        for s in steps
    )


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("page_runs")
    (runs / "pretrain").mkdir()
    (runs / "pretrain" / "metrics.jsonl").write_text(metrics_lines(range(1, 6)))
    return runs


@pytest.fixture(scope="module")
def base_url(test_data, tmp_path_factory, runs_dir) -> str:
    model_dir = chat_model_dir(test_data, tmp_path_factory.mktemp("page"))
    with serving(model_dir, model_name=NAME, api_key=KEY, runs_dir=runs_dir) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as driver:
        yield driver


def api_reply(base_url: str, messages: list[dict]) -> str:
    body = {"model": NAME, "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS}
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx2.post(f"{base_url}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def assert_only_this_server(driver, base_url: str, expected: set[str]) -> None:
    """Every request since the last check went to `base_url`, among them `expected` paths."""
    urls = requested_urls(driver)
    assert urls and all(url.startswith(f"{base_url}/") for url in urls), urls
    assert expected <= {url.removeprefix(base_url).partition("?")[0] for url in urls}
    assert not [m for m in console_messages(driver) if "Content Security Policy" in m]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)


def test_chat_streams_the_reply_the_api_gives_and_keeps_the_conversation(
    browser, base_url, tmp_path
):
    requested_urls(browser)  # drop what earlier tests requested
    open_page(browser, base_url, KEY, NAME)
    browser.find_element(By.ID, "system-prompt").send_keys(SYSTEM)
    browser.find_element(By.ID, "temperature").send_keys("0")
    browser.find_element(By.ID, "max-tokens").send_keys(str(MAX_TOKENS))

    question = "In the beginning God created"
    first = send(browser, question)
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    first_text = text_content(browser, first.find_element(By.CSS_SELECTOR, ".content"))
    assert first_text and first_text == api_reply(base_url, conversation)
    assert int(first.get_attribute("data-chunks")) > 1  # it came in pieces, as they were made

    follow_up = "And the earth was without form"
    second = send(browser, follow_up)
    conversation += [
        {"role": "assistant", "content": first_text},
        {"role": "user", "content": follow_up},
    ]
    second_text = text_content(browser, second.find_element(By.CSS_SELECTOR, ".content"))
    assert second_text == api_reply(base_url, conversation)

    browser.save_screenshot(str(tmp_path / "chat.png"))
    assert_png(tmp_path / "chat.png")
    expected = {"/", "/static/app.js", "/static/style.css", "/v1/ui/config"}
    assert_only_this_server(browser, base_url, expected | {"/v1/chat/completions"})


def chart_points(driver) -> list[int]:
    return [int(driver.find_element(By.ID, c).get_attribute("data-points")) for c in CHARTS]


def wait_for_points(driver, count: int) -> None:
    wait_for(driver, lambda d: chart_points(d) == [count] * len(CHARTS), f"{count} points")


def test_runs_chart_a_point_per_metrics_line_and_follow_the_file(
    browser, base_url, runs_dir, tmp_path
):
    requested_urls(browser)
    open_page(browser, base_url, KEY, NAME)
    browser.find_element(By.ID, "tab-runs").click()
    metrics = runs_dir / "pretrain" / "metrics.jsonl"
    wait_for_points(browser, len(metrics.read_text().splitlines()))
    assert browser.find_element(By.ID, "run-title").text == "pretrain"

    # A run writing now: three more lines and half of a fourth, then the rest of it.
    fourth = metrics_lines(range(9, 10))
    with open(metrics, "a", encoding="utf-8") as f:
        f.write(metrics_lines(range(6, 9)) + fourth[:10])
    wait_for_points(browser, 8)
    with open(metrics, "a", encoding="utf-8") as f:
        f.write(fourth[10:])
    wait_for_points(browser, 9)
    assert len(metrics.read_text().splitlines()) == 9

    browser.save_screenshot(str(tmp_path / "runs.png"))
    assert_png(tmp_path / "runs.png")
    assert_only_this_server(browser, base_url, {"/v1/runs", "/v1/runs/pretrain/metrics"})
