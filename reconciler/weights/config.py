"""Where the hub is, whether it may be contacted, and which token to send.

huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import time. modelplane reads
them (and ``HF_TOKEN``) when a download starts and passes them to every call explicitly
(``endpoint=``, ``token=``, ``local_files_only=``), so a changed environment, a test or a second
endpoint in the same process all behave as configured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants

from .errors import TokenFileError

# modelplane talks to the one hub it is told to, and only for files: huggingface_hub's telemetry
# (user-agent details, and a daily fetch of an "agent harness" registry from the endpoint, without
# the token, cached in the user's ~/.cache) stays off unless HF_HUB_DISABLE_TELEMETRY says so.
if "HF_HUB_DISABLE_TELEMETRY" not in os.environ:
    constants.HF_HUB_DISABLE_TELEMETRY = True

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubSettings:
    """How to reach the hub. ``token`` is excluded from ``repr`` so it cannot leak into a log."""

    endpoint: str = DEFAULT_ENDPOINT
    offline: bool = False
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(
        cls,
        token_file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> HubSettings:
        """Settings from the environment; a token file (``Node.hfTokenFile``) beats ``HF_TOKEN``."""
        env = os.environ if environ is None else environ
        endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        offline = (env.get("HF_HUB_OFFLINE") or "").strip().lower() in _TRUE
        token = read_token_file(token_file) if token_file else (env.get("HF_TOKEN") or None)
        return cls(endpoint=endpoint, offline=offline, token=token)

    @property
    def token_arg(self) -> str | bool:
        """What to pass as ``token=``: ours, or ``False`` so the library never picks another."""
        return self.token if self.token else False


def read_token_file(path: str | Path) -> str | None:
    """The token in ``path`` (surrounding whitespace removed); an empty file means no token."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as err:
        raise TokenFileError(f"cannot read hfTokenFile {path}: {err.strerror or err}") from None
    return text.strip() or None
