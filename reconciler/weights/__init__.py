"""Model weights: resolve, download, verify, dedupe, gc and mirror a Hugging Face cache.

Everything goes through huggingface_hub against a standard cache directory, so the ``hf`` CLI and
other tools see the same files. Modules, one job each:

``config``      where the hub is, offline or not, which token (read at call time)
``resolve``     manifest source -> commit + selected files with sizes and hashes
``verify``      cached files against sizes and sha256 / git blob ids
``disk``        free-space check before a download
``dedupe``      identical blobs across repos stored once (hard links)
``download``    the download action: inspect, check space, fetch, verify, record
``service``     the async API the executor calls (:class:`Weights`)
``gc``          unreferenced revisions: list, and delete when asked
``gguf_meta``   GGUF header metadata for VRAM estimates and status
``cache_store`` / ``mirror``  serve a cache as a hub endpoint for other boxes
"""

from .config import HubSettings, read_token_file
from .dedupe import DedupeReport, dedupe_cache
from .disk import check_space, free_space
from .download import (
    DownloadResult,
    Progress,
    ensure_downloaded,
    fetch,
    measure_progress,
    model_path,
)
from .errors import (
    HubError,
    HubUnreachable,
    InsufficientDisk,
    NoMatchingFiles,
    NotCachedError,
    TokenFileError,
    VerificationError,
    WeightsError,
)
from .gc import GcCandidate, GcPlan, collect, plan_gc
from .gguf_meta import read_gguf_metadata
from .hub_cache import Weights
from .layout import snapshot_dir
from .mirror import DEFAULT_LISTEN, MirrorServer, serve
from .resolve import RemoteFile, Resolution, resolve, resolve_cached, resolve_remote
from .verify import FileProblem, SnapshotCheck, check_snapshot

__all__ = [
    "DEFAULT_LISTEN",
    "DedupeReport",
    "DownloadResult",
    "FileProblem",
    "GcCandidate",
    "GcPlan",
    "HubError",
    "HubSettings",
    "HubUnreachable",
    "InsufficientDisk",
    "MirrorServer",
    "NoMatchingFiles",
    "NotCachedError",
    "Progress",
    "RemoteFile",
    "Resolution",
    "SnapshotCheck",
    "TokenFileError",
    "VerificationError",
    "Weights",
    "WeightsError",
    "check_snapshot",
    "check_space",
    "collect",
    "dedupe_cache",
    "ensure_downloaded",
    "fetch",
    "free_space",
    "measure_progress",
    "model_path",
    "plan_gc",
    "read_gguf_metadata",
    "read_token_file",
    "resolve",
    "resolve_cached",
    "resolve_remote",
    "serve",
    "snapshot_dir",
]
