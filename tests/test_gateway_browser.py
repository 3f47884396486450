"""The gateway's chat page in a real browser: headless Chromium reads the late headers.

Tier 3, asyncio only (uvicorn in threads; Selenium drives the browser synchronously).
The page is served from one origin and calls the gateway on another, so every request is
a real CORS request: the numbers the page shows come from headers that the browser lets
``fetch()`` read only because `HeaderFirstMiddleware(expose_late_headers=True)` listed
them. Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/test-scale`` installs
them); nothing is downloaded at run time: Selenium is given both paths and runs offline.

Set ``GATEWAY_SCREENSHOT=docs/gateway-browser.png`` to refresh the README's screenshot.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.gateway.demo import running, serve
from examples.gateway.probes import create_key
from examples.gateway.upstream import REPLY, REPLY_PIECES, estimate_tokens
from examples.gateway.web import create_page_app
from examples.serving import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0
CHUNK_DELAY = 0.05
RPM, TPM = 3, 1000
PROMPTS = ("hello", "how many requests are left?", "and how many tokens?")

pytestmark = pytest.mark.scale


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        raise RuntimeError(
            f"{CHROMIUM} or {CHROMEDRIVER} is missing; run scripts/test-scale, which installs "
            "Debian's chromium and chromium-driver"
        )
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=820,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def _chat_page(browser: Any, **gateway: Any) -> Iterator[Any]:
    """The chat page, served from an origin of its own, open in ``browser`` and ready;
    yields its `WebDriverWait`. The page's key has the limits `RPM` and `TPM` on a gateway
    started with the options ``gateway`` that lets the page's origin call it.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    with running(cors_origins=[origin], **gateway) as servers:
        key = create_key(servers.gateway_url, rpm_limit=RPM, tpm_limit=TPM)
        with serve(create_page_app(servers.gateway_url, key), port=page_port) as page_url:
            browser.get(page_url + "/")
            wait = WebDriverWait(browser, WAIT)
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
            yield wait


def _send(browser: Any, wait: Any, number: int, prompt: str) -> dict[str, Any]:
    """Type ``prompt``, send it, wait until the page is done with it; its record."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "prompt").send_keys(prompt)
    browser.find_element(By.ID, "send").click()
    wait.until(
        lambda d: d.execute_script(
            "const r = window.chatRecord[arguments[0]]; return !!(r && r.done);", number
        )
    )
    record: dict[str, Any] = browser.execute_script(
        "return window.chatRecord[arguments[0]];", number
    )
    return record


def _shown(browser: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    fields = ("remaining-requests", "limit-requests", "remaining-tokens", "limit-tokens")
    return {field: browser.find_element(By.ID, field).text for field in fields}


def _tokens(prompt: str) -> int:
    return estimate_tokens({"messages": [{"role": "user", "content": prompt}]})


def test_the_chat_page_shows_the_streams_rate_limits_and_the_429(
    browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    with _chat_page(browser, chunk_delay=CHUNK_DELAY) as wait:
        used = 0
        for number, prompt in enumerate(PROMPTS):
            record = _send(browser, wait, number, prompt)
            used += _tokens(prompt)
            expected = {
                "remaining-requests": str(RPM - 1 - number),
                "limit-requests": str(RPM),
                "remaining-tokens": str(TPM - used),
                "limit-tokens": str(TPM),
            }
            assert record["status"] == 200
            assert record["quota"] == expected
            assert _shown(browser) == expected
            assert record["text"] == REPLY
            # One DOM update per streamed piece, spread over the upstream's pauses:
            # the text arrived incrementally, not in one buffered block.
            times = record["chunks"]
            assert len(times) == len(REPLY_PIECES)
            assert times == sorted(times)
            assert times[-1] - times[0] >= (len(REPLY_PIECES) - 1) * CHUNK_DELAY * 1000 / 2

        metas = [element.text for element in browser.find_elements(By.CLASS_NAME, "meta")]
        assert [meta.split("; ")[1] for meta in metas] == [
            "2 requests, 999 tokens left",
            "1 requests, 993 tokens left",
            "0 requests, 988 tokens left",
        ]
        refused = _send(browser, wait, len(PROMPTS), "one more")
        assert refused["status"] == 429
        assert refused["text"] == ""
        assert refused["quota"]["remaining-requests"] == "0"
        assert _shown(browser)["remaining-requests"] == "0"
        error = browser.find_element(By.ID, "error")
        assert error.text.startswith(
            "429 Too Many Requests: Rate limit exceeded for api_key: requests per minute;"
        )
        retry_after = error.get_attribute("data-retry-after")
        assert retry_after is not None and 1 <= int(retry_after) <= 60

        screenshot = Path(os.environ.get("GATEWAY_SCREENSHOT") or tmp_path / "page.png")
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000


def test_without_the_fix_the_page_cannot_read_the_streams_rate_limits(browser: Any) -> None:
    # The same page against the gateway without this library: CORSMiddleware alone lists
    # no x-ratelimit-* header, so fetch() hides them although they may be on the wire.
    with _chat_page(browser, fix=False) as wait:
        record = _send(browser, wait, 0, "hello")
        shown = _shown(browser)
    assert record["status"] == 200
    assert record["text"] == REPLY
    assert record["quota"] == dict.fromkeys(shown, None)
    assert shown == dict.fromkeys(shown, "unreadable")
