"""`chuan serve --kb`'s web page in a real browser (headless Chromium, `helpers/browser.py`):
the page says answers come from the knowledge base and lists, under the streamed answer, the
sources the API cites for the same question (same seed), by number and file:line."""

from __future__ import annotations

import httpx2
import pytest
from selenium.webdriver.common.by import By

from chuan.rag.answer import Retrieval
from helpers.browser import headless_chromium, open_page, requested_urls, send, text_content
from helpers.serving import serving

KEY = "kb-page-key"
NAME = "tiny-kb-page"
SAMPLING = {"temperature": 1, "seed": 11, "max_tokens": 60}  # as test_serve_kb.py asks


@pytest.fixture(scope="module")
def base_url(chat_model, glossary_kb) -> str:
    retrieval = Retrieval.open(glossary_kb, k=3, cite_threshold=0.0)  # cites the model's noise
    with serving(chat_model, max_batch=4, model_name=NAME, api_key=KEY, grounding=retrieval) as url:
        yield url


def api_answer(base_url: str, question: str) -> dict:
    messages = [{"role": "user", "content": question}]
    body = {"model": NAME, "messages": messages, **SAMPLING}
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx2.post(f"{base_url}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_page_lists_the_citations_of_the_streamed_answer(base_url, question):
    expected = api_answer(base_url, question)
    assert expected["citations"], "a threshold-0 checker cites what shares terms"
    with headless_chromium() as browser:
        open_page(browser, base_url, KEY, NAME)
        assert "knowledge base" in browser.find_element(By.ID, "kb-state").text
        for field, value in SAMPLING.items():
            browser.find_element(By.ID, field.replace("_", "-")).send_keys(str(value))
        reply = send(browser, question)
        text = text_content(browser, reply.find_element(By.CSS_SELECTOR, ".content"))
        shown = [
            text_content(browser, entry.find_element(By.TAG_NAME, "strong"))
            for entry in reply.find_elements(By.CSS_SELECTOR, ".citations li")
        ]
        urls = requested_urls(browser)
    assert text == expected["choices"][0]["message"]["content"]
    assert shown == [f"[{c['index']}] {c['source']}:{c['line']}" for c in expected["citations"]]
    assert all(url.startswith(f"{base_url}/") for url in urls), urls
