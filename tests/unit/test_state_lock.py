"""The state directory's lock in one process: a second holder is refused at once, a release
lets the next one in, and ``modelplane run`` gives it back however its start-up ends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.control.controller import Controller
from reconciler.control.serve import serve
from reconciler.state.lock import StateDirLocked, StateLock


def test_a_second_holder_is_refused_and_a_release_lets_the_next_in(tmp_path: Path) -> None:
    first = StateLock(tmp_path)
    first.acquire()
    with pytest.raises(StateDirLocked) as refused:
        StateLock(tmp_path).acquire()  # another open file: flock refuses it, even in-process
    assert refused.value.pid == os.getpid()
    assert f"pid {os.getpid()}" in str(refused.value)
    first.release()
    first.release()  # twice is harmless
    with StateLock(tmp_path):
        pass


async def test_run_releases_the_lock_when_it_cannot_start(tmp_path: Path) -> None:
    missing = tmp_path / "manifests"  # no such directory: run exits 1
    assert await serve(missing) == 1
    controller = await Controller.open(missing)
    state_dir = controller.state_dir
    await controller.close()
    with StateLock(state_dir):  # free again in this same process
        pass
