"""The manifest kinds (the README's "Manifests") as pydantic models.

Field names are snake_case in Python and camelCase in YAML (``stay_warm`` ↔ ``stayWarm``).
Unknown fields are errors. Durations are stored as seconds (float) and sizes as bytes (int);
the JSON Schema still shows them as the strings people write.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from proxy.gateway import Priority
from reconciler.units import parse_duration, parse_listen, parse_size

API_VERSION = "modelplane/v1"

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$|^\d+(\.\d+)?$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 90s, 15m, 2h, 1h30m, or 0.",
        }
    ),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGTP]i?B|B)?\s*$"},
                {"type": "integer", "minimum": 0},
            ],
            "description": "A size: 512MiB, 6GiB, 24GB, or a number of bytes.",
        }
    ),
]
NAME_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
NAME_RULE = "up to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"
ALIAS_RULE = f"{NAME_RULE}; '/' may join such parts (as in Qwen/Qwen2.5-7B-Instruct)"


def _matching(pattern: str, what: str, rule: str) -> AfterValidator:
    """A check with a message people can act on (pydantic's own says only "should match
    pattern"); the JSON Schema keeps the pattern for editors."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if len(value) > 100 or not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {what}: use {rule}")
        return value

    return AfterValidator(check)


# Model names are also file, container and URL path names: no '/'. Aliases are only routed.
Name = Annotated[
    str,
    _matching(NAME_PART, "name", NAME_RULE),
    WithJsonSchema({"type": "string", "pattern": f"^{NAME_PART}$", "maxLength": 100}),
]
Alias = Annotated[
    str,
    _matching(f"{NAME_PART}(/{NAME_PART})*", "alias", ALIAS_RULE),
    WithJsonSchema(
        {"type": "string", "pattern": f"^{NAME_PART}(/{NAME_PART})*$", "maxLength": 100}
    ),
]


def _listen_address(text: str) -> str:
    """Kept as written; parsed here so that a bad address is a manifest error, not a crash later.
    Port 0 (any free port) is refused: clients and the CLI find the proxy at this address."""
    if parse_listen(text)[1] == 0:
        raise ValueError(f"listen address {text!r}: the proxy needs a fixed port, not 0")
    return text


Listen = Annotated[
    str,
    AfterValidator(_listen_address),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]*):\d+$",
            "description": "HOST:PORT: 127.0.0.1:8400, [::1]:8400, or :8400 (every interface).",
        }
    ),
]
RuntimeName = Literal["process", "docker", "ray"]
ImagePull = Literal["IfNotPresent", "Always", "Never"]
NotifyEvent = Literal["Failed", "Unschedulable", "Recovered", "Applied"]


class Strict(BaseModel):
    """Base for every manifest object: camelCase keys, unknown keys forbidden."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
    )


# --- Model ----------------------------------------------------------------------------------


class HuggingFaceSource(Strict):
    repo: str = Field(pattern=r"^[\w.-]+(/[\w.-]+)?$", description="owner/name on the hub")
    revision: str = Field("main", description="Branch, tag or commit sha.")
    files: list[str] | None = Field(
        None, description="Globs of the files to fetch; omitted = the whole repo."
    )


class Source(Strict):
    huggingface: HuggingFaceSource | None = None
    path: str | None = Field(None, description="A local file or directory, used in place.")
    prefetch: bool = Field(True, description="Download on apply, not on the first request.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        named = [k for k in ("huggingface", "path") if getattr(self, k) is not None]
        if not named:
            raise ValueError("source names no kind: give exactly one of huggingface, path")
        if len(named) > 1:
            raise ValueError("source names two kinds (huggingface and path): give exactly one")
        return self


class ContainerSpec(Strict):
    """Docker-only settings."""

    shm_size: Size | None = None
    memory: Size | None = None
    user: str | None = None
    volumes: list[str] = Field(default_factory=list, description="host:container[:ro] binds")
    network: Literal["host", "bridge"] = "host"
    extra_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for docker's containers.run."
    )


class ModelSpec(Strict):
    source: Source
    engine: str = "llama-server"
    args: list[str] = Field(default_factory=list, description="Appended to the engine's command.")
    env: dict[str, str] = Field(default_factory=dict)
    gpus: Literal["auto", "none"] | list[Annotated[int, Field(ge=0)]] = "auto"
    vram: Size | None = None
    pin: bool = False
    stay_warm: Duration = 900.0
    priority: Priority = "normal"
    aliases: list[Alias] = Field(default_factory=list)
    max_concurrency: int = Field(8, ge=1)
    startup_timeout: Duration = 600.0
    request_timeout: Duration = Field(
        600.0,
        description="Longest wait for the first byte of a backend's answer; then 504. 0 = none.",
    )
    idle_timeout: Duration = Field(
        300.0,
        description="Longest silence between two chunks of an answer; then 504 (or an error "
        "event in a stream). 0 = none.",
    )
    runtime: RuntimeName | None = Field(None, description="Overrides Node.runtime.")
    image_pull: ImagePull | None = None
    container: ContainerSpec | None = None
    suspend: bool = Field(False, description="Freeze this model as it is.")
    loading_as_reasoning: bool | None = Field(
        None, description="Overrides Node.proxy.loadingAsReasoning for this model."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Ray runtime: run only on nodes whose Ray labels have these values "
        "(ray start --labels zone=a).",
    )


# --- Engine ---------------------------------------------------------------------------------


class EngineSpec(Strict):
    image: str | None = Field(None, description="Used by the docker runtime.")
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    health_path: str = "/health"
    api: Literal["openai"] = "openai"
    image_pull: ImagePull = "IfNotPresent"


# --- Node -----------------------------------------------------------------------------------


class StaticGpu(Strict):
    """One entry of a static ``Node.spec.gpus`` list: a GPU modelplane may use. With NVML the
    list restricts the GPUs to these indices and ``memory`` caps one; without NVML it is the
    inventory, and then ``memory`` is how much the GPU has."""

    index: int = Field(ge=0)
    memory: Size | None = None
    name: str | None = None


class ApiKeySpec(Strict):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="modelplane hash-key < keyfile")
    models: list[str] = Field(default_factory=lambda: ["*"], description="fnmatch globs")


class GitSpec(Strict):
    url: str
    branch: str = "main"
    interval: Duration = 60.0
    ssh_key_file: str | None = None
    path: str = Field(".", description="The manifests' folder inside the repository.")


class NotifyTarget(Strict):
    url: str
    events: list[NotifyEvent] = Field(
        default_factory=lambda: ["Failed", "Unschedulable", "Recovered", "Applied"]
    )


class ProxySpec(Strict):
    """Limits of the OpenAI endpoint."""

    max_body_size: Size = 32 * 2**20
    max_queue: int = Field(256, ge=0, description="Requests that may wait per model; then 429.")
    queue_timeout: Duration = Field(
        300.0, description="Longest wait for a slot or for room on the GPUs; then 503."
    )
    loading_comment_interval: Duration = 5.0
    loading_as_reasoning: bool = Field(
        False,
        description="A streaming chat completion that waits for its model gets the loading "
        "progress as reasoning_content deltas (shown by chat UIs) instead of SSE comments.",
    )
    max_stay_warm: Duration = Field(
        3600.0,
        description="The longest a request's x_stay_warm may keep its model loaded after it "
        "(Model Boss clients); 0 ignores x_stay_warm.",
    )
    access_log: bool = Field(
        False,
        description="One log line per request. Off by default: on a small box it costs about a "
        "quarter of the proxy's throughput; the SQLite request log and /metrics are always kept.",
    )


class RaySpec(Strict):
    """The Ray cluster that runs the models (``runtime: ray``)."""

    address: str = Field(
        description="auto (a cluster this machine is part of), ray://head:10001 (Ray Client) "
        "or head:6379 (the GCS).",
        pattern=r"^(auto|ray://.+:\d+|[^/\s]+:\d+)$",
    )
    namespace: str = Field(
        "modelplane",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The Ray namespace of modelplane's actors (one per controller).",
    )
    cache_dir: str | None = Field(
        None,
        description="Each node's Hugging Face cache (an HF_HOME, local or shared); default "
        "~/.cache/modelplane/hf of the user Ray runs as.",
    )


class NodeSpec(Strict):
    runtime: RuntimeName = "process"
    listen: Listen = "127.0.0.1:8400"
    gpus: Literal["auto", "none"] | list[StaticGpu] = "auto"
    vram_reserve: Size = 512 * 2**20
    cache_dir: str | None = None
    state_dir: str | None = None
    resync: Duration = 30.0
    api_keys: list[ApiKeySpec] = Field(default_factory=list)
    max_downloads: int = Field(2, ge=1)
    max_loaded: int | None = Field(
        None,
        ge=1,
        description="At most this many models loaded at once; a start evicts by the same "
        "priority/LRU policy as for VRAM. For CPU-only boxes, where no VRAM figure exists "
        "(Ollama loads 3 on the CPU). Unset: no limit but the GPUs' memory.",
    )
    hf_token_file: str | None = None
    docker_host: str | None = None
    ray: RaySpec | None = None
    git: GitSpec | None = None
    notify: list[NotifyTarget] = Field(default_factory=list)
    proxy: ProxySpec = Field(default_factory=ProxySpec)

    @model_validator(mode="after")
    def _ray_needs_a_cluster(self) -> NodeSpec:
        if self.runtime == "ray" and self.ray is None:
            raise ValueError("runtime: ray needs ray.address, the cluster to run on")
        return self


# --- envelopes ------------------------------------------------------------------------------


class Metadata(Strict):
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)


class _Document(Strict):
    api_version: Literal["modelplane/v1"]
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name


class ModelDoc(_Document):
    kind: Literal["Model"]
    spec: ModelSpec


class EngineDoc(_Document):
    kind: Literal["Engine"]
    spec: EngineSpec


class NodeDoc(_Document):
    kind: Literal["Node"]
    spec: NodeSpec = NodeSpec()


Document = ModelDoc | EngineDoc | NodeDoc
KINDS: dict[str, type[ModelDoc] | type[EngineDoc] | type[NodeDoc]] = {
    "Model": ModelDoc,
    "Engine": EngineDoc,
    "Node": NodeDoc,
}


def json_schema() -> dict[str, Any]:
    """One JSON Schema accepting any manifest document (for yaml-language-server)."""
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(
        Annotated[ModelDoc | EngineDoc | NodeDoc, Field(discriminator="kind")]
    )
    schema = adapter.json_schema(by_alias=True)
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "modelplane manifest"
    return schema
