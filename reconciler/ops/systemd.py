"""The systemd notify protocol (``Type=notify``), written out: one datagram per message.

systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) and, with
``WatchdogSec=``, ``$WATCHDOG_USEC``. Without ``$NOTIFY_SOCKET`` (a shell, a container) every
method is a no-op, so callers never check.

:meth:`SystemdNotifier.keepalive` runs as an asyncio task on the service's own event loop: while
the loop turns it sends ``WATCHDOG=1`` at half the watchdog interval, so a hung loop stops the
pings and systemd restarts the service. Before ``READY=1`` it sends ``EXTEND_TIMEOUT_USEC``
instead, so a long first pass (weights downloading) does not hit ``TimeoutStartSec=`` while the
loop is alive, but a loop hung during startup still does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as an address for ``sendto``: ``@name`` is abstract (leading NUL)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_usec_from(env: MutableMapping[str, str], pid: int) -> int | None:
    """The watchdog interval meant for ``pid``, in microseconds; None when there is none."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (watchdog_pid and watchdog_pid != str(pid)):
        return None
    return usec


@dataclass
class SystemdNotifier:
    """Sends sd_notify messages; create one with :meth:`from_environ` at startup."""

    address: str | bytes | None = None  # None: not under systemd, every call is a no-op
    watchdog_usec: int | None = None
    _ready: bool = False

    @classmethod
    def from_environ(
        cls, env: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> SystemdNotifier:
        """Read the notify socket and watchdog from the environment.

        ``unset`` removes the variables afterwards, so backends started as child processes do not
        inherit them (a backend that speaks sd_notify would otherwise talk to our unit).
        """
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET")
        notifier = cls(
            address=socket_address(raw) if raw else None,
            watchdog_usec=watchdog_usec_from(env, os.getpid()),
        )
        if unset:
            for name in _ENV:
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_period(self) -> float | None:
        """Seconds between pings (half the watchdog interval), or None without a watchdog."""
        return self.watchdog_usec / 2e6 if self.enabled and self.watchdog_usec else None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True if it was sent (never raises)."""
        if self.address is None:
            return False
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full receive queue must not stall the event loop
                sock.sendto(payload, self.address)
        except OSError as exc:
            log.warning("sd_notify %r failed: %s", payload[:60], exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: the proxy listens and the first pass has run."""
        self._ready = True
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=...``: the one line ``systemctl status`` shows (no newlines)."""
        return self.notify(f"STATUS={' '.join(text.split())}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start (or stop) timeout fires."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: a graceful drain has begun (the keepalive task may go on pinging)."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    async def keepalive(self) -> None:
        """Ping from the event loop until cancelled; returns at once without a watchdog."""
        period = self.watchdog_period
        if period is None:
            return
        while True:
            if self._ready:
                self.watchdog()
            else:
                self.extend_timeout(period * 4)  # two missed ticks of slack
            await asyncio.sleep(period)
