"""Weights throughput on this box: mirror -> huggingface_hub download, sha256 verification,
and a second box fetching from the first box's mirror.

    PYTHONPATH=. python tests/bench/bench_weights.py [--mib 256]

Prints numbers; asserts nothing. Everything runs on loopback in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from reconciler.weights import HubSettings, MirrorServer, check_snapshot, fetch
from tests.weights.hubgen import HubRepos


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256, help="size of the weights file")
    args = parser.parse_args()
    size = args.mib * 2**20
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repos = HubRepos(root / "hub")
        repos.commit("bench/model", {"model.safetensors": os.urandom(size)})
        with MirrorServer(repos.root) as hub:
            t0 = time.perf_counter()
            result = fetch(root / "a", "bench/model", "main", None, HubSettings(endpoint=hub.url))
            t1 = time.perf_counter()
        report("download + verify (box A)", size, t1 - t0)

        t0 = time.perf_counter()
        assert check_snapshot(root / "a", result.resolution, deep=True).complete
        report("sha256 verify alone", size, time.perf_counter() - t0)

        with MirrorServer(root / "a") as mirror:
            t0 = time.perf_counter()
            fetch(root / "b", "bench/model", "main", None, HubSettings(endpoint=mirror.url))
            report("box B from box A's mirror", size, time.perf_counter() - t0)

        repos.commit(
            "bench/fork",
            {"model.safetensors": result.model_path.joinpath("model.safetensors").read_bytes()},
        )
        with MirrorServer(repos.root) as hub:
            t0 = time.perf_counter()
            fork = fetch(root / "a", "bench/fork", "main", None, HubSettings(endpoint=hub.url))
            report(
                f"same blob in a 2nd repo (linked: {bool(fork.linked)})",
                size,
                time.perf_counter() - t0,
            )


def report(what: str, size: int, seconds: float) -> None:
    print(
        f"{what:<45} {size / 2**20:7.0f} MiB in {seconds:6.2f} s = "
        f"{size / 2**20 / seconds:7.0f} MiB/s"
    )


if __name__ == "__main__":
    main()
