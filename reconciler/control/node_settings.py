"""What ``modelplane run`` does with a changed Node manifest. Pure.

Most of the Node is followed live, on the next pass: GPUs and reserve, resync, runtime, downloads
and the hub token, webhooks, API keys. A few settings are fixed when ``run`` starts: the socket
it listens on, the proxy's limits, the state directory, the docker daemon it talks to and pull
mode's repository. A change to one of those is never ignored silently: the service logs it,
records a ``RestartNeeded`` event and ``status`` warns until it is restarted (or the change is
undone).

API keys are live, with one exception: a change that would leave a listener on a non-loopback
address without keys (open to the network, admin API included) is refused; the keys in force
stay, with an error, until keys are back or ``run`` is restarted (it then binds loopback).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from reconciler.manifests.schema import ApiKeySpec, NodeSpec, ProxySpec

FIXED_AT_START: tuple[str, ...] = (
    "listen",
    "stateDir",
    "dockerHost",
    "git",
    *(f"proxy.{field.alias or name}" for name, field in ProxySpec.model_fields.items()),
)


def needs_restart(
    started: NodeSpec, now: NodeSpec, fixed: Iterable[str] = FIXED_AT_START
) -> list[str]:
    """Each setting in ``fixed`` that differs from what ``run`` started with, as
    ``Node.spec.<path> (old → new)`` (``Node.spec.git changed`` for a whole section)."""
    before = started.model_dump(by_alias=True, mode="json")
    after = now.model_dump(by_alias=True, mode="json")
    changes = []
    for path in fixed:
        old, new = _at(before, path), _at(after, path)
        if old == new:
            continue
        if isinstance(old, dict | list) or isinstance(new, dict | list):
            changes.append(f"Node.spec.{path} changed")
        else:
            changes.append(f"Node.spec.{path} ({_shown(old)} → {_shown(new)})")
    return changes


def restart_warning(changes: Sequence[str]) -> str | None:
    if not changes:
        return None
    return f"{', '.join(changes)}: needs a restart of modelplane run to apply"


def keys_in_force(
    on_loopback: bool, in_force: Sequence[ApiKeySpec], wanted: Sequence[ApiKeySpec], where: str
) -> tuple[list[ApiKeySpec], str | None]:
    """The keys to enforce after a Node change, and why the wanted ones were refused."""
    if wanted or on_loopback or not in_force:
        return list(wanted), None
    return list(in_force), (
        f"refusing to remove every API key while listening on {where}: that would open it, "
        "admin API included, to the network. The previous keys stay in force; add keys, or "
        "restart modelplane run to listen on loopback only without them"
    )


def _at(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _shown(value: Any) -> str:
    return "unset" if value is None else str(value)
