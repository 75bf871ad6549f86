"""What can go wrong with weights, as exceptions that carry a one-line reason for a `Failed` phase.

Every error says whether retrying soon could help (``retryable``), so the reconcile loop can back
off without hammering the hub: a file missing from the cache in offline mode, or a file the hub
serves with the wrong checksum, will not fix itself by asking again.
Messages never contain the hub token (see :func:`redact`).
"""

from __future__ import annotations


class WeightsError(Exception):
    """Base class: ``str(err)`` is the reason to show; ``retryable`` hints the loop's backoff."""

    retryable: bool = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HubError(WeightsError):
    """The hub answered with an error (repo or revision not found, no access, server error)."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.retryable = retryable


class HubUnreachable(WeightsError):
    """No answer from the hub endpoint (network down, mirror stopped)."""


class NoMatchingFiles(WeightsError):
    """The manifest's globs select no file at this revision."""

    retryable = False


class NotCachedError(WeightsError):
    """Offline (``HF_HUB_OFFLINE``) and the files are not in the cache: asking again cannot help."""

    retryable = False


class InsufficientDisk(WeightsError):
    """Not enough free space for what is still missing; nothing in the cache was touched."""

    def __init__(self, reason: str, *, needed: int, free: int, path: str) -> None:
        super().__init__(reason)
        self.needed = needed
        self.free = free
        self.path = path


class VerificationError(WeightsError):
    """A file fails its size or checksum even after a second fetch: the source serves bad data."""

    retryable = False


class DownloadCancelled(WeightsError):
    """The download was stopped on purpose (shutdown); its partial file is deleted."""


class TokenFileError(WeightsError):
    """``Node.hfTokenFile`` names a file that cannot be read (its content is never shown)."""

    retryable = False


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` replaced, so a token never reaches a log or an event."""
    if not secret:
        return text
    return text.replace(secret, "***")
