"""Generated hub repos for the tests, written in Hugging Face cache layout.

The mirror serves a cache directory, so the test hub is simply a directory of repos written the
way huggingface_hub would have cached them: ``blobs/`` named by sha256 (LFS-style files: weights)
or git blob id (small files), ``snapshots/<commit>/`` of relative symlinks, ``refs/<branch|tag>``.
Each :meth:`HubRepos.commit` makes a new commit and moves the branch to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from huggingface_hub.utils.sha import git_hash

from reconciler.weights import layout

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt")


class HubRepos:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._counter = 0

    def commit(
        self,
        repo: str,
        files: dict[str, bytes],
        *,
        branch: str = "main",
        tags: tuple[str, ...] = (),
        sha: str | None = None,
    ) -> str:
        """Write a commit holding exactly ``files``; point ``branch`` (and ``tags``) at it."""
        self._counter += 1
        etags = {path: etag_of(path, data) for path, data in files.items()}
        listing = "".join(f"{p}:{e}\n" for p, e in sorted(etags.items()))
        commit = sha or hashlib.sha1(f"{repo}|{self._counter}|{listing}".encode()).hexdigest()
        for path, data in files.items():
            blob = layout.blob_path(self.root, repo, etags[path])
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                blob.write_bytes(data)
            pointer = layout.pointer_path(self.root, repo, commit, path)
            pointer.parent.mkdir(parents=True, exist_ok=True)
            pointer.symlink_to(os.path.relpath(blob, pointer.parent))
        layout.snapshot_dir(self.root, repo, commit).mkdir(parents=True, exist_ok=True)
        for ref in (branch, *tags):
            layout.write_ref(self.root, repo, ref, commit)
        return commit

    def blob(self, repo: str, path: str, data: bytes) -> Path:
        return layout.blob_path(self.root, repo, etag_of(path, data))


def etag_of(path: str, data: bytes) -> str:
    if path.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return git_hash(data)


def safetensors_bytes(n_values: int, seed: int = 0) -> bytes:
    """A valid little safetensors file: one F16 tensor of ``n_values`` pseudo-random values."""
    header = {"weight": {"dtype": "F16", "shape": [n_values], "data_offsets": [0, 2 * n_values]}}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    data = hashlib.shake_256(f"safetensors-{seed}".encode()).digest(2 * n_values)
    return struct.pack("<Q", len(head)) + head + data


def config_bytes(**fields: object) -> bytes:
    return json.dumps({"architectures": ["LlamaForCausalLM"], **fields}).encode()
