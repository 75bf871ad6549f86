"""An interrupted transfer resumes with a Range request instead of starting over.

huggingface_hub writes a file in 10 MiB chunks (``DOWNLOAD_CHUNK_SIZE``) and, when the connection
drops, asks for the rest from the last chunk it wrote. The file is therefore a little over
10 MiB and the server cuts it after 10.5 MiB: the retry must ask for ``bytes=10485760-``.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants

from reconciler.weights import HubSettings, MirrorServer, check_snapshot, fetch
from reconciler.weights.mirror import DropConnection

from .conftest import gets
from .hubgen import HubRepos


def test_dropped_connection_resumes_from_the_last_chunk(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    data = os.urandom(chunk + 2 * 2**20)
    repos.commit("org/big", {"model.safetensors": data})
    hub.faults.append(DropConnection("model.safetensors", after_bytes=chunk + 2**19))

    result = fetch(cache, "org/big", "main", None, settings)

    first, second = gets(hub, "model.safetensors")
    assert first.range is None and first.status == 200
    assert second.range == f"bytes={chunk}-" and second.status == 206
    assert result.refetched == ()
    assert check_snapshot(cache, result.resolution, deep=True).complete
    assert (result.snapshot_dir / "model.safetensors").read_bytes() == data
