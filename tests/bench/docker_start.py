"""Time the docker runtime on a private dockerd: daemon start, image import, start-to-healthy, stop.

    PYTHONPATH=. python tests/bench/docker_start.py [--fresh] [--rounds 5]

``--fresh`` uses a throwaway data-root, so the image import from the cached tarball is timed too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from reconciler.runtimes.docker import DockerRuntime
from tests.docker.conftest import fake_spec
from tests.docker_env import ensure_image, rootfs_tarball, start_daemon


async def bench(rounds: int, fresh: bool) -> None:
    started = time.monotonic()
    rootfs_tarball()
    print(f"rootfs tarball (cached after the first build): {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    daemon = start_daemon(persistent=not fresh)
    print(f"dockerd start: {time.monotonic() - started:.2f}s")
    try:
        started = time.monotonic()
        ensure_image(daemon.client(), log=lambda line: print("  " + line))
        print(f"test image ready: {time.monotonic() - started:.2f}s")
        runtime = DockerRuntime(daemon.host)
        starts, stops = [], []
        for _ in range(rounds):
            started = time.monotonic()
            instance = await runtime.start(fake_spec("bench"))
            starts.append(time.monotonic() - started)
            started = time.monotonic()
            await runtime.stop(instance, grace=5)
            stops.append(time.monotonic() - started)
        print(f"start-to-healthy: median {statistics.median(starts):.2f}s  max {max(starts):.2f}s")
        print(f"stop+remove:      median {statistics.median(stops):.2f}s  max {max(stops):.2f}s")
    finally:
        daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    asyncio.run(bench(args.rounds, args.fresh))


if __name__ == "__main__":
    main()
