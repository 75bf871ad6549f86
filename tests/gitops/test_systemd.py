"""``modelplane run`` under a Type=notify unit: READY, STATUS, WATCHDOG and STOPPING datagrams
arrive on a unix datagram socket the test binds, as systemd's would."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gitops.support import node_doc, wait_for
from tests.helpers.backend import free_port
from tests.helpers.manifests import ManifestDir, fake_engine_doc, model_doc
from tests.helpers.service import start_service


class Systemd:
    """The receiving end of $NOTIFY_SOCKET; each datagram is kept with the time it arrived."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.on_ready: list[object] = []  # what was true when READY=1 arrived
        self.port = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                text = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in text.splitlines():
                self.on_ready.append(self._listening())
            self.messages.append((time.monotonic(), text))

    def _listening(self) -> bool:
        """Whether the proxy accepts connections at the moment READY=1 arrives."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                return True
        except OSError:
            return False

    def lines(self, key: str) -> list[str]:
        return [
            line.partition("=")[2]
            for _, text in self.messages
            for line in text.splitlines()
            if line.partition("=")[0] == key
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def systemd() -> Iterator[Systemd]:
    with tempfile.TemporaryDirectory(prefix="sd-") as tmp:  # short: sun_path is 108 bytes
        receiver = Systemd(str(Path(tmp) / "notify"))
        yield receiver
        receiver.close()


def test_run_sends_ready_status_watchdog_and_stopping(
    tmp_path: Path, state: Path, systemd: Systemd
) -> None:
    manifests = ManifestDir(tmp_path / "manifests")
    manifests.write("node.yaml", node_doc())
    manifests.write("engine.yaml", fake_engine_doc("fake", "--echo-env", "NOTIFY_SOCKET"))
    manifests.write("a.yaml", model_doc("a", pin=True, startupTimeout="1m"))
    env = {"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "1000000"}  # ping every 0.5 s
    systemd.port = free_port()
    with start_service(manifests.root, state, port=systemd.port, env=env) as svc:
        wait_for(lambda: systemd.lines("READY"), "READY=1", svc=svc)
        assert systemd.on_ready == [True], "READY=1 before the proxy listened"
        ready_at = next(t for t, text in systemd.messages if "READY=1" in text)
        before = [text for t, text in systemd.messages if t < ready_at]
        assert all(text.startswith("EXTEND_TIMEOUT_USEC=") for text in before), before
        # READY=1 carries the first summary; later lines follow the model to Ready
        assert systemd.lines("STATUS")[0].startswith("generation 1: ")
        wait_for(
            lambda: "generation 1: 1 ready, 0 asleep, 0 failed" in systemd.lines("STATUS"),
            "STATUS with a ready model",
            svc=svc,
        )
        wait_for(lambda: len(systemd.lines("WATCHDOG")) >= 3, "watchdog pings", svc=svc)
        after = [text for t, text in systemd.messages if t > ready_at]
        assert not any("EXTEND_TIMEOUT_USEC" in text for text in after)

        # the backend did not inherit NOTIFY_SOCKET (it would talk to our unit)
        endpoint = svc.model("a")["endpoint"]
        with urllib.request.urlopen(endpoint + "/debug/stats", timeout=5) as resp:
            assert json.loads(resp.read())["env"]["NOTIFY_SOCKET"] is None

        assert svc.stop() == 0
    assert systemd.lines("STOPPING") == ["1"]
    assert systemd.lines("STATUS")[-1] == "stopping: draining requests in flight"
    assert systemd.lines("READY") == ["1"]
