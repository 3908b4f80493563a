"""The trace page in a real headless Chromium, driven through the DevTools protocol.

Chromium speaks the protocol over a pipe (``--remote-debugging-pipe``: commands on its fd 3,
replies and events on its fd 4, each a JSON message ended by a NUL byte), so no client
library and no browser download is needed: Debian's ``chromium`` package is enough. The
test is skipped, saying so, where no Chromium is installed; CI installs it (.ci/run).

``KVSPEC_SCREENSHOT=PATH`` also writes the screenshot to PATH (how the one in docs/ is made).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kvspec.conformance.show import write_html
from kvspec.conformance.trace import Trace

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="no chromium installed (Debian: apt-get install chromium)")


#: A six-step failure: a block reused from the cache keeps its stale hash (the zoo's
#: stale-hash-on-reuse), after a hit on an evictable block.
SIX_STEPS = {
    "format": "kvspec-trace", "version": 1, "level": "pool",
    "config": {"num_blocks": 4, "enable_caching": True, "profile": "current", "mode": "strict"},
    "steps": [
        {"op": "get_new_blocks", "args": {"num_blocks": 2}},
        {"op": "cache_block", "args": {"block_id": 1, "block_hash": "61", "parent": None}},
        {"op": "cache_block", "args": {"block_id": 2, "block_hash": "612e61", "parent": "61"}},
        {"op": "free_blocks", "args": {"block_ids": [2, 1]}},
        {"op": "get_cached_block", "args": {"block_hash": "61"}},
        {"op": "get_new_blocks", "args": {"num_blocks": 2}},
    ],
    "note": "a block reused from the cache keeps its stale hash",
}


class DevTools:
    """A headless Chromium and one page, over the DevTools protocol's pipe transport."""

    def __init__(self, binary: str, profile_dir: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child: the protocol's fds 3 (in) and 4 (out)
            cmd = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(cmd, 3)
            os.dup2(out, 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile_dir}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_fds,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, *, session: bool = False, timeout: float = 30,
             **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(timeout)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def requested(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path: Path):
    assert CHROMIUM is not None
    devtools = DevTools(CHROMIUM, tmp_path / "chromium-profile")
    yield devtools
    devtools.close()


def test_the_page_loads_cleanly_with_one_panel_per_step_and_the_divergence_marked(
        browser: DevTools, tmp_path: Path) -> None:
    trace = Trace.from_json(SIX_STEPS)
    page = tmp_path / "trace.html"
    write_html(trace, "mutant:stale-hash-on-reuse", page)

    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=1200, height=900,
                 deviceScaleFactor=1, mobile=False)
    browser.call("Page.navigate", session=True, url=page.as_uri())
    browser.wait_for("Page.loadEventFired")
    found = browser.call("Runtime.evaluate", session=True, returnByValue=True, expression="""
        JSON.stringify({
          panels: document.querySelectorAll('section.step').length,
          divergent: [...document.querySelectorAll('section.step.divergent')]
                       .map(s => Number(s.dataset.step)),
          differing: [...document.querySelectorAll('section.step.divergent .row.differs')]
                       .map(r => r.dataset.observation),
          border: getComputedStyle(document.querySelector('section.step.divergent'))
                    .borderTopColor,
          verdict: document.querySelector('.verdict.fail').textContent,
        })""")
    seen = json.loads(found["result"]["value"])

    assert browser.errors() == []
    assert browser.requested() == [page.as_uri()]  # nothing fetched but the page itself
    assert seen["panels"] == len(trace.steps)
    assert seen["divergent"] == [len(trace.steps)]
    assert seen["differing"], "the divergent step marks the observations that differ"
    assert seen["border"] == "rgb(217, 48, 37)"
    assert seen["verdict"].startswith(f"diverges at step {len(trace.steps)}")

    size = browser.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
    shot = browser.call("Page.captureScreenshot", session=True, format="png",
                        captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": size["width"],
                              "height": size["height"], "scale": 1})
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG")
    (tmp_path / "trace.png").write_bytes(png)
    if os.environ.get("KVSPEC_SCREENSHOT"):
        Path(os.environ["KVSPEC_SCREENSHOT"]).write_bytes(png)
