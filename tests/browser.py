"""Headless Chromium (Debian's, driven by Playwright) for the browser tests, and a page watcher.

Playwright's own browser download cannot work offline, so the tests drive Debian's /usr/bin/chromium (`make env`
installs it when it can). Missing, it is a skip that says how to install it, except on CI (CI=true), where it is a
failure: a CI that skipped the browser tests would pass without testing what a reader sees.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver (as root; `make env` does it)"
# The closed network refuses Chromium's background connections, many at a time; these flags stop them.
# Playwright starts the browser headless with a fresh temporary profile (user-data dir) of its own.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL = {"localhost", "127.0.0.1", "::1", "[::1]"}


def missing(why: str):
    """Skip the test saying what is missing and how to install it; on CI (CI=true), fail it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run on CI: {why}")
    pytest.skip(f"browser tests skipped: {why}")


def require_browser():
    """Skip (or fail under CI=true) when Chromium or Playwright is missing; return playwright.sync_api."""
    if not CHROMIUM.is_file():
        missing(f"no {CHROMIUM}; {INSTALL}")
    try:
        import playwright.sync_api as sync_api
    except ImportError:
        missing("no playwright; pip install -e '.[dev]' (make env does)")
    return sync_api


@contextlib.contextmanager
def chromium():
    """One headless Chromium for a test module (starting one costs about a second)."""
    sync_api = require_browser()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """A static server for ``directory`` on a free localhost port; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Watch:
    """Records what a page does wrong: console errors, uncaught exceptions, failed requests, and every request
    that leaves localhost (those are aborted, so a page that needs the network breaks visibly here too)."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text} {m.location}"))
        page.on("pageerror", lambda e: self.errors.append(f"exception: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("requestfailed", lambda r: r.url not in self.outside
                and self.errors.append(f"request failed: {r.url} {r.failure}"))
        page.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if urlparse(url).scheme in ("data", "blob") or urlparse(url).hostname in LOCAL:
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()
