"""A real headless Chromium for page tests, driven over ``--remote-debugging-pipe`` (the DevTools protocol: JSON
messages ended by NUL on the browser's fds 3 and 4), so no driver package is needed; the network is cut off."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    def __init__(self, profile: str, exe: str | None = None):
        r_cmd, w_cmd = os.pipe()  # our commands → the browser's fd 3
        r_res, w_res = os.pipe()  # the browser's fd 4 → our replies

        def child():  # our pipe ends may themselves be fds 3/4: park them high first
            os.dup2(r_cmd, 100), os.dup2(w_res, 101)
            os.dup2(100, 3), os.dup2(101, 4)

        self.proc = subprocess.Popen(
            [exe or chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--mute-audio",
             "--remote-debugging-pipe", "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
             f"--user-data-dir={profile}", "about:blank"],
            close_fds=False, preexec_fn=child, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(r_cmd), os.close(w_res)
        self.w, self.r = os.fdopen(w_cmd, "wb", 0), os.fdopen(r_res, "rb", 0)
        self.buf, self.n, self.session = b"", 0, None

    def send(self, method: str, **params) -> dict:
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buf:
                chunk = self.r.read(1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            m = json.loads(raw)
            if m.get("id") == self.n:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    def open(self, url: str, timeout: float = 30.0) -> None:
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        end = time.time() + timeout
        while not self.eval(f"location.href === {json.dumps(url)} && document.readyState === 'complete'"):
            if time.time() > end:
                raise TimeoutError(f"{url} did not load in {timeout} s")
            time.sleep(0.1)

    def eval(self, expr: str):
        r = self.send("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("exception", {}).get("description", r["exceptionDetails"]))
        return r["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real left click at viewport coordinates (press + release), as a user's."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path) -> None:
        import base64

        with open(path, "wb") as f:
            f.write(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.w.close(), self.r.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
