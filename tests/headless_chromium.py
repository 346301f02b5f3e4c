"""A page opened in headless Chromium (Debian's `chromium`), driven over the DevTools protocol.

Why the protocol rather than `chromium --screenshot`/`--dump-dom`: it reports every request the
*page* makes (Network.requestWillBeSent, also for one the page's CSP blocks), apart from the
browser's own background traffic (component updates, sign-in, time service), which a proxy would
see mixed in; and it can click. The protocol runs over a pipe (`--remote-debugging-pipe`: commands
on the child's fd 3, replies and events on its fd 4, each message JSON ending in a NUL byte), so no
port is opened. The browser's network goes to a proxy on a closed loopback port: nothing leaves.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium")
# A proxy that refuses every connection (port 9, discard: nothing listens on it here): the
# browser cannot reach any network, loopback included.
DEAD_PROXY = "http://127.0.0.1:9"


@dataclass
class PageVisit:
    """What one page load showed: the page's requests, its DOM after its scripts ran, a screenshot."""

    requests: list[str] = field(default_factory=list)  # URLs, the page's own document first
    dom: str = ""
    screenshot: bytes = b""
    evaluated: list[Any] = field(default_factory=list)  # the `scripts`' values, in order
    console_errors: list[str] = field(default_factory=list)  # uncaught exceptions
    log: list[str] = field(default_factory=list)  # the browser's log for the page (CSP violations, ...)


class _DevTools:
    def __init__(self, process: subprocess.Popen[bytes], to_browser: int, from_browser: int) -> None:
        self.process = process
        self.to_browser = to_browser
        self.from_browser = from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        reply = self._until(lambda m: m.get("id") == self.next_id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def wait_event(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        return self._until(lambda m: m.get("method") == method, timeout)

    def _until(self, wanted: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium over the DevTools pipe")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    raise ConnectionError(f"chromium closed the DevTools pipe (exit {self.process.poll()})")
                self.buffer += chunk


def visit(page: Path, profile: Path, *, width: int = 1280, height: int = 2400,
          scripts: tuple[str, ...] = (), media: str = "screen") -> PageVisit:
    """Open `page` (a file) at width x height CSS pixels, as CSS `media` ("screen" or "print")
    shows it, wait for its load event, then evaluate each of `scripts` (JavaScript expressions, by
    value) and take the DOM and a PNG screenshot."""
    assert CHROMIUM is not None
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    # Out of the way of fds 3 and 4, which the child gets them as.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]
    for fd in (to_child_r, from_child_w):
        os.close(fd)

    def child_fds() -> None:  # (subprocess closes the other fds after this: pass_fds keeps 3 and 4)
        os.dup2(high[0], 3)
        os.dup2(high[1], 4)

    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-extensions",
            "--disable-sync", "--no-default-browser-check", f"--user-data-dir={profile}",
            f"--proxy-server={DEAD_PROXY}", "--proxy-bypass-list=<-loopback>", "--remote-debugging-pipe",
            "about:blank"]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               pass_fds=(3, 4), preexec_fn=child_fds, env={**os.environ, "HOME": str(profile)})
    for fd in high:
        os.close(fd)
    tools = _DevTools(process, to_child_w, from_child_r)
    result = PageVisit()
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Network.enable", "Page.enable", "Runtime.enable", "Log.enable"):
            tools.send(method, session=session)
        tools.send("Emulation.setDeviceMetricsOverride",
                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        tools.send("Emulation.setEmulatedMedia", {"media": media}, session=session)
        tools.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        tools.wait_event("Page.loadEventFired")
        for script in scripts:
            value = tools.send("Runtime.evaluate", {"expression": script, "returnByValue": True}, session=session)
            result.evaluated.append(value.get("result", {}).get("value"))
        result.dom = tools.send("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                                     "returnByValue": True}, session=session)["result"]["value"]
        shot = tools.send("Page.captureScreenshot", {"format": "png"}, session=session)
        result.screenshot = base64.b64decode(shot["data"])
        for event in tools.events:
            if event.get("method") == "Network.requestWillBeSent" and event.get("sessionId") == session:
                result.requests.append(event["params"]["request"]["url"])
            if event.get("method") == "Runtime.exceptionThrown":
                result.console_errors.append(json.dumps(event["params"])[:500])
            if event.get("method") == "Log.entryAdded" and event.get("sessionId") == session:
                entry = event["params"]["entry"]
                result.log.append(f"{entry.get('level')}: {entry.get('text')}")
        with contextlib.suppress(ConnectionError, TimeoutError):  # it may close before answering
            tools.send("Browser.close", timeout=10)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(to_child_w)
        os.close(from_child_r)
    return result
