"""sd_notify datagrams arrive on a real unix datagram socket the test binds."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.ops.systemd import SystemdNotifier, socket_address


class Receiver:
    """The systemd side: a bound datagram socket, read with a timeout."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(10)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(10)
        return True


@pytest.fixture(params=["path", "abstract"])
def receiver_env(request: pytest.FixtureRequest) -> Iterator[tuple[Receiver, dict[str, str]]]:
    """A receiver and the environment systemd would give the service."""
    if request.param == "path":
        with tempfile.TemporaryDirectory(prefix="sdn-") as tmp:  # short: sun_path is 108 bytes
            path = str(Path(tmp) / "notify")
            receiver = Receiver(path)
            yield receiver, {"NOTIFY_SOCKET": path}
            receiver.sock.close()
    else:
        name = f"modelplane-test-{os.getpid()}-{id(request)}"
        receiver = Receiver(b"\0" + name.encode())
        yield receiver, {"NOTIFY_SOCKET": "@" + name}
        receiver.sock.close()


def test_messages_arrive(receiver_env: tuple[Receiver, dict[str, str]]) -> None:
    receiver, env = receiver_env
    sd = SystemdNotifier.from_environ(env)
    assert sd.enabled and env == {}  # unset: children will not inherit the socket
    assert sd.ready("3 models, 1 ready")
    assert receiver.recv() == "READY=1\nSTATUS=3 models, 1 ready"
    assert sd.status("applied a1b2c3\n(two lines)")
    assert receiver.recv() == "STATUS=applied a1b2c3 (two lines)"
    assert sd.watchdog()
    assert receiver.recv() == "WATCHDOG=1"
    assert sd.extend_timeout(2.5)
    assert receiver.recv() == "EXTEND_TIMEOUT_USEC=2500000"
    assert sd.stopping("draining")
    assert receiver.recv() == "STOPPING=1\nSTATUS=draining"


def test_without_notify_socket_everything_is_a_noop() -> None:
    sd = SystemdNotifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not sd.enabled and sd.watchdog_period is None
    assert sd.ready() is False and sd.status("x") is False and sd.watchdog() is False


def test_a_socket_nobody_listens_on_does_not_raise(tmp_path: Path) -> None:
    sd = SystemdNotifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert sd.ready() is False


def test_address_and_watchdog_parsing() -> None:
    assert socket_address("@abc") == b"\0abc"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    pid = os.getpid()
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}
    assert SystemdNotifier.from_environ(dict(env)).watchdog_period == 15.0
    other = {**env, "WATCHDOG_PID": str(pid + 1)}  # meant for another process
    assert SystemdNotifier.from_environ(other).watchdog_period is None
    assert SystemdNotifier.from_environ({**env, "WATCHDOG_USEC": "soon"}).watchdog_usec is None
    kept = dict(env)
    SystemdNotifier.from_environ(kept, unset=False)
    assert kept == env


async def test_keepalive_extends_startup_then_pings_and_stops_with_the_loop(
    receiver_env: tuple[Receiver, dict[str, str]],
) -> None:
    receiver, env = receiver_env
    sd = SystemdNotifier.from_environ({**env, "WATCHDOG_USEC": "100000"})  # ping every 50ms
    task = asyncio.create_task(sd.keepalive())
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, receiver.recv) == "EXTEND_TIMEOUT_USEC=200000"
    sd.ready()
    while (message := await loop.run_in_executor(None, receiver.recv)) != "READY=1":
        assert message == "EXTEND_TIMEOUT_USEC=200000"  # sent before ready() ran
    assert await loop.run_in_executor(None, receiver.recv) == "WATCHDOG=1"
    assert await loop.run_in_executor(None, receiver.recv) == "WATCHDOG=1"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)  # several periods: nothing may arrive once the task is gone
    while receiver.pending():  # drain what was in flight at cancel time (at most one)
        pass
    await asyncio.sleep(0.3)
    assert not receiver.pending()


async def test_keepalive_returns_without_a_watchdog() -> None:
    sd = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "@nowhere"})
    await asyncio.wait_for(sd.keepalive(), 5)
