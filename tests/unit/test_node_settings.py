"""What ``modelplane run`` does with a changed Node: the pure policy (control/node_settings.py)."""

from __future__ import annotations

from reconciler.control.node_settings import (
    FIXED_AT_START,
    keys_in_force,
    needs_restart,
    restart_warning,
)
from reconciler.manifests.schema import ApiKeySpec, NodeSpec

KEY = ApiKeySpec(name="ops", sha256="0" * 64)


def node(**spec: object) -> NodeSpec:
    return NodeSpec.model_validate(spec)


def test_settings_followed_live_need_no_restart() -> None:
    live = node(resync="5s", vramReserve="2GiB", maxDownloads=4, apiKeys=[KEY.model_dump()])
    assert needs_restart(node(), live) == []


def test_settings_fixed_at_start_are_named_with_old_and_new() -> None:
    changed = node(listen="0.0.0.0:9000", proxy={"accessLog": True}, git={"url": "file:///x"})
    assert needs_restart(node(), changed) == [
        "Node.spec.listen (127.0.0.1:8400 → 0.0.0.0:9000)",
        "Node.spec.git changed",
        "Node.spec.proxy.accessLog (False → True)",
    ]
    assert restart_warning([]) is None
    assert restart_warning(["Node.spec.git changed"]) == (
        "Node.spec.git changed: needs a restart of modelplane run to apply"
    )


def test_listen_given_on_the_command_line_is_not_compared() -> None:
    fixed = tuple(f for f in FIXED_AT_START if f != "listen")
    assert needs_restart(node(), node(listen="0.0.0.0:9000"), fixed) == []


def test_every_key_removed_on_a_public_listener_keeps_the_keys() -> None:
    keys, refused = keys_in_force(False, [KEY], [], "0.0.0.0")
    assert keys == [KEY]
    assert refused is not None and "listening on 0.0.0.0" in refused


def test_keys_change_freely_otherwise() -> None:
    other = ApiKeySpec(name="new", sha256="1" * 64)
    assert keys_in_force(False, [KEY], [other], "0.0.0.0") == ([other], None)
    assert keys_in_force(True, [KEY], [], "127.0.0.1") == ([], None)
