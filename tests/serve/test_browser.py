"""End-to-end: the web chat page in headless Chromium (Debian's, driven by Playwright) against `fedit serve`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed "
                       "(apt-get install -y chromium); browsers cannot be downloaded here"),
]


def test_type_a_message_and_see_a_streamed_reply(server: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    question = "What is the capital of France?"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            # the server wants a key: the page says it cannot list models until one is given
            expect(page.locator("#status")).to_contain_text("cannot list models")
            page.fill("#apikey", server.api_key)
            page.dispatch_event("#apikey", "change")
            expect(page.locator("#model option")).to_have_count(2)
            page.select_option("#model", "r1")
            info = page.locator("#info")
            expect(info.locator("[data-field=round]")).to_have_text("1")
            expect(info.locator("[data-field=base]")).to_contain_text("tiny")
            expect(info.locator("[data-field=adapter]")).to_contain_text("round_0001")
            # greedy settings, so the page's answer can be checked against the API's
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "16")
            page.fill("#input", question)
            page.press("#input", "Enter")
            expect(page.locator(".msg.user .text")).to_have_text(question)
            reply = page.locator(".msg.assistant.complete .text")
            expect(reply).to_have_count(1, timeout=60_000)
            expect(page.locator("#status")).to_contain_text("done")
            text = reply.inner_text()
            if os.environ.get("FEDIT_SCREENSHOT"):
                page.screenshot(path=os.environ["FEDIT_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
    settings = {"temperature": 0, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1, "max_tokens": 16}
    body = {"model": "r1", "messages": [{"role": "user", "content": question}], **settings}
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json=body,
                   headers={"Authorization": f"Bearer {server.api_key}"})
    expected = r.json()["choices"][0]["message"]["content"]
    assert text.strip() and text == expected
