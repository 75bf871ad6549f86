"""What a hostile manifest costs the running service: the proxy's stall, memory, database growth.

    PYTHONPATH=. python tests/bench/hostile_manifests.py [--case bomb --case big ...]

Starts the real ``modelplane run`` over a manifest directory with one pinned fake-backend model,
then, per case, drops one file into the directory while a client sends a chat completion every
20 ms; it waits until the service has read the file (``/api/status`` lists its error, or the
model it names) or ``--wait`` seconds, and removes the file again. Prints per case: the longest
request (the proxy's stall), the service's peak RSS (VmHWM) and the database's size before and
after.

Cases: ``bomb`` (a ~600-byte "billion laughs" in a Model's ``container.extraArgs``, 6 levels:
half a million values once expanded), ``big`` (a 10 MB manifest: one Model and comments),
``deep`` (300 levels of nesting), ``many`` (a 1 MiB file of 1,200 valid Models: the largest
file the default limit lets through).

A script, not a test: numbers depend on the machine (and on what else runs on it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from reconciler.units import format_size  # noqa: E402
from tests.helpers.backend import free_port  # noqa: E402
from tests.helpers.manifests import ManifestDir, doc, fake_engine_doc, model_doc  # noqa: E402


def bomb(levels: int = 6) -> str:
    lines = ["    x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    head = "apiVersion: modelplane/v1\nkind: Model\nmetadata: {name: bomb}\nspec:\n"
    head += "  source: {path: /srv/bomb.gguf}\n  engine: fake\n  container:\n   extraArgs:\n"
    return head + "\n".join(lines) + "\n"


def big(size: int = 10 * 2**20) -> str:
    text = model_doc("big")
    return text + "# padding\n" * ((size - len(text)) // 10)


def deep(levels: int = 300) -> str:
    head = "apiVersion: modelplane/v1\nkind: Model\nmetadata: {name: deep}\nspec:\n"
    return head + "  source: {path: /x}\n  engine: fake\n  env: " + "[" * levels + "]" * levels


def many(size: int = 2**20 - 4096) -> str:
    docs, total, i = [], 0, 0
    while True:
        text = model_doc(f"many-{i}") + "  # a comment to make the documents a little longer\n"
        if total + len(text) + 4 > size:
            return "---\n".join(docs)
        docs.append(text)
        total += len(text) + 4
        i += 1


CASES = {"bomb": bomb, "big": big, "deep": deep, "many": many}


class Prober(threading.Thread):
    """A chat completion every 20 ms; remembers the longest one since :meth:`reset`."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.longest = 0.0
        self.failures = 0
        self.stopping = threading.Event()

    def reset(self) -> None:
        self.longest, self.failures = 0.0, 0

    def run(self) -> None:
        body = json.dumps(
            {"model": "probe", "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        while not self.stopping.is_set():
            started = time.monotonic()
            request = urllib.request.Request(
                self.url + "/v1/chat/completions",
                data=body,
                headers={"content-type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    response.read()
            except (OSError, urllib.error.HTTPError):
                self.failures += 1
            self.longest = max(self.longest, time.monotonic() - started)
            time.sleep(0.02)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def database_size(state: Path) -> int:
    """The database with its WAL."""
    return sum(p.stat().st_size for p in state.glob("modelplane.db*"))


def status(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/status", timeout=120) as response:
        return json.loads(response.read())


def seen(url: str, name: str, model: str) -> bool:
    body = status(url)
    text = json.dumps(body.get("errors", [])) + json.dumps(body.get("models", []))
    return name in text or model in text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--wait", type=float, default=60.0)
    options = parser.parse_args()
    cases = options.case or ["bomb", "big", "deep", "many"]
    with tempfile.TemporaryDirectory() as tmp:
        manifests = ManifestDir(Path(tmp) / "manifests")
        manifests.write("engine.yaml", fake_engine_doc("fake"))
        manifests.write("probe.yaml", model_doc("probe", pin=True))
        node = {"runtime": "process", "gpus": "none", "resync": "5s"}
        manifests.write("node.yaml", doc("Node", "bench", node))
        state = Path(tmp) / "state"
        port = free_port()
        env = {**os.environ, "MODELPLANE_STATE_DIR": str(state), "PYTHONPATH": str(ROOT)}
        log = open(Path(tmp) / "run.log", "wb")  # noqa: SIM115 (kept open for the process)
        service = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "run", manifests.root, f"--listen=:{port}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if any(m["phase"] == "Ready" for m in status(url)["models"]):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("modelplane run did not become ready:\n" + log.name)
                time.sleep(0.2)
            prober = Prober(url)
            prober.start()
            time.sleep(2)
            print(f"{'case':<6} {'file':>10} {'stall':>8} {'peak RSS':>10}  DB before → after")
            for case in cases:
                text = CASES[case]()
                db_before = database_size(state)
                prober.reset()
                started = time.monotonic()
                manifests.write(f"{case}.yaml", text)
                deadline = started + options.wait
                while time.monotonic() < deadline and not seen(url, f"{case}.yaml", case):
                    time.sleep(0.2)
                time.sleep(2)  # what the pass does after reading the file
                took = time.monotonic() - started
                manifests.remove(f"{case}.yaml")
                time.sleep(3)
                print(
                    f"{case:<6} {format_size(len(text)):>10} {prober.longest:>7.2f}s "
                    f"{peak_rss_mib(service.pid):>7.0f}MiB  {format_size(db_before)} → "
                    f"{format_size(database_size(state))}  (read after {took:.1f}s, "
                    f"{prober.failures} failed requests)"
                )
            prober.stopping.set()
        finally:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(30)
            except subprocess.TimeoutExpired:
                service.kill()
            subprocess.run(
                [sys.executable, "-m", "reconciler.cli", "down", "--dir", str(manifests.root)],
                env=env,
                capture_output=True,
            )


if __name__ == "__main__":
    main()
