"""Engines that exist without a manifest. A manifest ``Engine`` of the same name overrides one.

``{python}`` is the interpreter modelplane runs under (so a virtual environment's packages are
found); the docker runtime fills it with ``python3``.
"""

from __future__ import annotations

from .schema import EngineSpec

BUILTIN_ENGINES: dict[str, EngineSpec] = {
    "llama-server": EngineSpec(
        image="ghcr.io/ggml-org/llama.cpp:server-cuda",
        command=["llama-server", "--model", "{model_path}", "--host", "{host}", "--port", "{port}"],
        health_path="/health",
    ),
    "llama-cpp-python": EngineSpec(
        image=None,
        command=[
            "{python}",
            "-m",
            "llama_cpp.server",
            "--model",
            "{model_path}",
            "--model_alias",
            "{name}",
            "--host",
            "{host}",
            "--port",
            "{port}",
        ],
        health_path="/v1/models",
    ),
    "vllm": EngineSpec(
        image="vllm/vllm-openai:latest",
        command=[
            "vllm",
            "serve",
            "{model_path}",
            "--served-model-name",
            "{name}",
            "--host",
            "{host}",
            "--port",
            "{port}",
        ],
        health_path="/health",
    ),
}
