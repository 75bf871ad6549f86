"""Hugging Face weights inside the reconciler: resolve, check, download, report, collect.

One :class:`WeightsManager` per :class:`~reconciler.controller.Controller`. It wraps the async
:class:`~reconciler.weights.Weights` (which does the work with huggingface_hub) and adds what the
reconciler needs around it:

- every model's ``source.huggingface`` resolved to a commit on each load and resync, remembered
  in the state database (a hub outage, offline mode or a restart keeps the last known commit, so
  the spec hash of what runs does not change), with an event when a branch moves;
- each pass, a cheap look at the cache (presence, sizes, and a fingerprint — size, mtime, inode —
  of every blob against the one recorded when it was last hashed) for the pure download gate in
  :mod:`.weights_plan`: only files that changed since their last verification are hashed again;
- the ``download`` action itself, with events (a corrupt file deleted and fetched again says so),
  the ``Downloading``/``Failed`` phase in the database for ``modelplane status``, and the GGUF
  header of each file recorded for status and VRAM estimates;
- what ``status`` shows (revision, size, quantisation, bytes done) and what ``gc`` must keep.

The hub token comes from ``Node.hfTokenFile`` or ``HF_TOKEN`` (never a manifest) and is never
written anywhere: :class:`~reconciler.weights.HubSettings` keeps it out of ``repr`` and the
weights errors redact it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.manifests.manifest_set import ManifestSet
from reconciler.manifests.schema import HuggingFaceSource, ModelDoc, NodeSpec
from reconciler.planning.desired import Desired, DesiredModel
from reconciler.planning.outcome import Outcome
from reconciler.planning.planner import Action
from reconciler.runtimes.base import Instance, Prepare
from reconciler.state import paths
from reconciler.state.store import Store
from reconciler.units import format_size

from .gate import WeightsInfo, WeightsState
from .records import FileRecord, WeightsRecords
from .remote import HubWeights, fetch_on_node

# The weights package imports huggingface_hub, httpx and gguf (numpy): a second or more of start
# time that every CLI command would pay. It is imported where a hub source needs it.
if TYPE_CHECKING:
    from . import GcPlan, Progress, Resolution, Weights

log = logging.getLogger("modelplane.weights")

SourceKey = tuple[str, str, tuple[str, ...] | None]  # (repo, revision as written, globs)
ProgressListener = Callable[[str, "Progress"], None]  # (model, progress)


def hub_sources(manifests: ManifestSet) -> dict[str, HuggingFaceSource]:
    """Every model in force whose source is on the hub."""
    out = {}
    for name, item in manifests.models.items():
        assert isinstance(item.doc, ModelDoc)
        source = item.doc.spec.source.huggingface
        if source is not None:
            out[name] = source
    return out


def source_key(source: HuggingFaceSource) -> SourceKey:
    return (source.repo, source.revision, tuple(source.files) if source.files else None)


class WeightsManager:
    def __init__(self, store: Store, node: NodeSpec | None = None) -> None:
        self.store = store
        self.records = WeightsRecords(store)
        self.resolutions: dict[str, Resolution] = {}  # model → resolution in force
        self.problems: dict[str, str] = {}  # model → why its revision cannot be resolved now
        self._known: dict[SourceKey, Resolution] = {}
        self._weights: Weights | None = None
        self._node = node or NodeSpec()
        self._configured = False
        self._settings_error: str | None = None

    # --- configuration ----------------------------------------------------------------------

    def configure(self, node: NodeSpec) -> None:
        """Follow the Node manifest (cacheDir, maxDownloads, hfTokenFile) and the environment
        (HF_ENDPOINT, HF_HUB_OFFLINE, HF_TOKEN); called on every load, applied on next use."""
        self._node = node
        self._configured = False

    @property
    def weights(self) -> Weights:
        if not self._configured:
            self._apply()
        assert self._weights is not None
        return self._weights

    @property
    def settings_error(self) -> str | None:
        """Why the hub settings cannot be read (an unreadable ``hfTokenFile``), if they cannot."""
        _ = self.weights
        return self._settings_error

    def _apply(self) -> None:
        from . import HubSettings, TokenFileError, Weights

        node = self._node
        try:
            settings = HubSettings.from_env(node.hf_token_file)
            self._settings_error = None
        except TokenFileError as err:
            settings = HubSettings.from_env(environ={**os.environ, "HF_TOKEN": ""})
            self._settings_error = str(err)
        cache, slots = paths.hub_cache(node), node.max_downloads
        current = self._weights
        if current is None or current.cache_dir != cache or current.max_downloads != slots:
            # downloads under way with the previous settings finish there; new ones go here
            self._weights = Weights(cache, settings, max_downloads=slots)
        else:
            current.settings = settings
        self._configured = True

    @property
    def cache_dir(self) -> Path:
        return paths.hub_cache(self._node)

    # --- resolution -------------------------------------------------------------------------

    async def resolve_all(
        self, manifests: ManifestSet, *, online: bool = True, persist: bool = True
    ) -> dict[str, str]:
        """Resolve every hub source to a commit; returns model → commit for ``build_desired``.

        ``online``: ask the hub (or the cache, offline); else only what is known (memory, then
        the database). A failed resolution keeps the last known commit and records the reason in
        :attr:`problems` (it matters only while the weights are not ready). ``persist``: remember
        the result in the database and record an event when a revision moved (``plan`` does not).
        """
        sources = hub_sources(manifests)
        keys = {name: source_key(source) for name, source in sources.items()}
        unique = sorted(set(keys.values()), key=repr)
        results = await asyncio.gather(*(self._resolve(key, online, persist) for key in unique))
        found = dict(zip(unique, results, strict=True))
        self.resolutions, self.problems = {}, {}
        for name, key in sorted(keys.items()):
            resolution, problem, moved = found[key]
            if resolution is not None:
                self.resolutions[name] = resolution
            if problem is not None:
                self.problems[name] = problem
            if moved:
                await self.store.add_event("Resolved", moved, name)
        return {name: r.commit for name, r in self.resolutions.items()}

    async def _resolve(
        self, key: SourceKey, online: bool, persist: bool
    ) -> tuple[Resolution | None, str | None, str | None]:
        """(resolution, problem, event text when the revision resolved anew or moved)."""
        repo, revision, globs = key
        known = self._known.get(key) or await self.records.cached_resolution(repo, revision, globs)
        if not online:
            return known, None if known else f"{repo}@{revision} has not been resolved yet", None
        if self.settings_error:
            return known, self.settings_error, None
        try:
            resolution = await self.weights.resolve(repo, revision, globs)
        except Exception as err:
            reason = _reason(err, self.weights)
            log.warning("cannot resolve %s@%s: %s", repo, revision, reason)
            return known, reason, None
        moved = None
        if known is None or known.commit != resolution.commit or known.files != resolution.files:
            if persist:
                await self.records.save_resolution(resolution)
            if known is None or known.commit != resolution.commit:
                moved = f"{repo}@{revision} is commit {resolution.commit[:12]}"
                if known is not None:
                    moved += f" (was {known.commit[:12]})"
        if persist:
            self._known[key] = resolution
        return resolution, None, moved if persist else None

    def resolved_path(self, model: DesiredModel) -> str | None:
        """``{model_path}`` of a hub model: the main GGUF file or the snapshot folder of the
        commit its spec names (``None`` for other sources, or before the first resolution)."""
        if model.spec.source.huggingface is None:
            return None
        resolution = self.resolutions.get(model.name)
        commit = model.effective["source"]["huggingface"].get("revision")
        if resolution is None or resolution.commit != commit:
            return None
        from . import model_path

        return str(model_path(self.cache_dir, resolution))

    def remote_prepare(self, model: DesiredModel) -> Prepare | None:
        """For a backend on a Ray node: fetch the hub source there, into the node's own cache
        (``Node.ray.cacheDir``), at the commit resolved here. None for other sources."""
        source = model.spec.source.huggingface
        if source is None:
            return None
        ray = self._node.ray
        hub = HubWeights(
            repo=source.repo,
            commit=model.effective["source"]["huggingface"]["revision"],
            files=tuple(source.files) if source.files else None,
            cache_dir=ray.cache_dir if ray else None,
            endpoint=self.weights.settings.endpoint,
            offline=self.weights.settings.offline,
        )
        return partial(fetch_on_node, hub)

    # --- the state of the cache, for the gate -----------------------------------------------

    async def states(self, desired: Desired) -> dict[str, WeightsState]:
        """Every hub model's weights as the cache holds them now (stat calls, no hashing).

        A model on the Ray runtime fetches its weights on its node (:meth:`remote_prepare`):
        nothing is downloaded here, so it is ready once its revision is resolved."""
        out: dict[str, WeightsState] = {}
        for name, model in desired.models.items():
            source = model.spec.source.huggingface
            if source is None:
                continue
            resolution = self.resolutions.get(name)
            problem = self.problems.get(name)
            if resolution is None:
                why = problem or f"{source.repo}@{source.revision} has not been resolved yet"
                out[name] = WeightsState(source.repo, None, False, problem=why)
                continue
            if model.runtime == "ray":
                out[name] = WeightsState(resolution.repo, resolution.commit, ready=True)
                continue
            records = await self.records.files(resolution.repo, resolution.commit)
            out[name] = await asyncio.to_thread(
                inspect, self.cache_dir, resolution, records, problem
            )
        return out

    # --- the download action ----------------------------------------------------------------

    async def download(
        self, action: Action, on_progress: ProgressListener | None = None
    ) -> Outcome:
        """Fetch and verify the model's files; never raises (the outcome carries the reason)."""
        name = action.model
        resolution = self.resolutions.get(name)
        if resolution is None:
            message = self.problems.get(name, "revision not resolved")
            return Outcome(action, False, message)
        what = f"{resolution.repo}@{resolution.commit[:12]}"
        records = await self.records.files(resolution.repo, resolution.commit)
        current = await asyncio.to_thread(fingerprints, self.cache_dir, resolution)
        rehash = not _unchanged(current, records)
        await self.store.add_event("Downloading", str(action), name)
        listener = (lambda p: on_progress(name, p)) if on_progress else None
        try:
            result = await self.weights.ensure(resolution, listener, rehash=rehash)
        except Exception as err:
            reason = _reason(err, self.weights)
            await self.store.add_event("Failed", f"download of {what}: {reason}", name)
            return Outcome(action, False, reason, permanent=not getattr(err, "retryable", True))
        headers = await asyncio.to_thread(gguf_headers, self.cache_dir, resolution)
        verified = await asyncio.to_thread(fingerprints, self.cache_dir, resolution)
        await self.records.save_verified(resolution, verified, headers)
        for problem in result.refetched:
            await self.store.add_event(
                "Refetched",
                f"{problem.path} of {what} was corrupt ({problem.reason}):"
                " deleted and downloaded again",
                name,
            )
        lines = [line for line in result.events() if not line.startswith("re-fetched ")]
        summary = "; ".join(lines) or f"{len(resolution.files)} file(s) of {what} verified"
        await self.store.add_event("Downloaded", summary, name)
        return Outcome(action, True, summary)

    def close(self) -> None:
        """Stop the downloads under way (shutdown); they resume on the next start."""
        if self._weights is not None:
            self._weights.close()

    def progress(self, name: str) -> Progress | None:
        """A download under way in this process: bytes so far (``None``: waiting for a slot)."""
        resolution = self.resolutions.get(name)
        return self.weights.progress(resolution) if resolution else None

    # --- status and gc ----------------------------------------------------------------------

    async def info(
        self, desired: Desired, downloading: Collection[str] = (), live: bool = True
    ) -> dict[str, WeightsInfo]:
        """Revision, size, quantisation and download progress per model, for ``status``.

        ``downloading``: models with a download under way; ``live``: progress from this
        process's downloads, else measured on disk (``modelplane status`` beside the service).
        """
        out: dict[str, WeightsInfo] = {}
        for name, model in desired.models.items():
            if model.spec.source.path:
                out[name] = await asyncio.to_thread(local_info, model.spec.source.path)
                continue
            resolution = self.resolutions.get(name)
            if resolution is None:
                continue
            records = await self.records.files(resolution.repo, resolution.commit)
            main = _main_file(self.cache_dir, resolution)
            # a whole-repo source has no main file: its first GGUF (not a projector) stands in
            headers = [
                r.gguf
                for path, r in sorted(records.items())
                if r.gguf and not path.rsplit("/", 1)[-1].startswith("mmproj")
            ]
            header = records[main].gguf if main in records else (headers or [None])[0]
            done = total = None
            if name in downloading:
                from . import measure_progress

                progress = (
                    self.progress(name)
                    if live
                    else await asyncio.to_thread(measure_progress, self.cache_dir, resolution)
                )
                total = resolution.total_size
                done = progress.done if progress else 0
            out[name] = WeightsInfo(
                revision=resolution.commit,
                size=resolution.total_size,
                quantization=(header or {}).get("quantization"),
                done=done,
                total=total,
            )
        return out

    def in_use(self, desired: Desired, actual: Iterable[Instance]) -> list[tuple[str, str]]:
        """What ``gc`` must keep: each declared source (as written and as resolved) and the
        revision every managed instance runs, declared or not."""
        used: list[tuple[str, str]] = []
        for name, model in desired.models.items():
            source = model.spec.source.huggingface
            if source is not None:
                used.append((source.repo, source.revision))
                resolution = self.resolutions.get(name)
                if resolution is not None:
                    used.append((resolution.repo, resolution.commit))
        for inst in actual:
            hub = ((inst.spec or {}).get("source") or {}).get("huggingface")
            if inst.managed and isinstance(hub, dict) and hub.get("repo") and hub.get("revision"):
                used.append((hub["repo"], hub["revision"]))
        return used

    async def gc(self, desired: Desired, actual: Iterable[Instance], delete: bool) -> GcPlan:
        plan = await self.weights.gc(self.in_use(desired, actual), delete=delete)
        if delete and plan.candidates:
            freed = format_size(plan.reclaimable)
            listing = ", ".join(f"{c.repo}@{c.commit[:12]}" for c in plan.candidates)
            await self.store.add_event("GarbageCollected", f"deleted {listing}; freed {freed}")
        return plan


def _reason(err: BaseException, weights: Weights) -> str:
    """One line for a phase and an event; the token redacted. A weights error's own message is
    the reason; anything else (a bug, an unexpected library error) shows its type too."""
    from . import WeightsError
    from .errors import redact

    if isinstance(err, WeightsError):
        return redact(str(err), weights.settings.token)
    log.error("unexpected weights error", exc_info=err)
    return redact(f"{type(err).__name__}: {err}", weights.settings.token)


# --- blocking helpers (run in threads) ---------------------------------------------------------


def fingerprints(cache_dir: Path, resolution: Resolution) -> dict[str, str | None]:
    """``size:mtime_ns:inode`` of each file's blob (``None``: missing). Any write to a blob
    changes its mtime, so a file whose fingerprint matches the one recorded at its last hash
    still holds the bytes that were verified."""
    from .layout import link_target, pointer_path

    out: dict[str, str | None] = {}
    for remote in resolution.files:
        blob = link_target(pointer_path(cache_dir, resolution.repo, resolution.commit, remote.path))
        try:
            st = blob.stat() if blob is not None else None
        except OSError:
            st = None
        out[remote.path] = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}" if st else None
    return out


def _unchanged(current: Mapping[str, str | None], records: Mapping[str, FileRecord]) -> bool:
    """Every file on disk is as it was when last verified (missing files do not count)."""
    return all(
        path in records and records[path].fingerprint == fingerprint
        for path, fingerprint in current.items()
        if fingerprint is not None
    )


def inspect(
    cache_dir: Path,
    resolution: Resolution,
    records: Mapping[str, FileRecord],
    problem: str | None,
) -> WeightsState:
    """Ready when every file is present with its size and unchanged since it was hashed."""
    from . import check_snapshot

    check = check_snapshot(cache_dir, resolution, deep=False)
    current = fingerprints(cache_dir, resolution)
    ready = check.complete and _unchanged(current, records)
    return WeightsState(
        repo=resolution.repo,
        commit=resolution.commit,
        ready=ready,
        missing_files=len(check.missing) + len(check.corrupt),
        missing_bytes=check.bytes_missing,
        problem=problem,
    )


def gguf_headers(cache_dir: Path, resolution: Resolution) -> dict[str, dict[str, Any]]:
    """The GGUF header of every ``.gguf`` file of a verified download."""
    from . import read_gguf_metadata
    from .layout import pointer_path

    out = {}
    for remote in resolution.files:
        if not remote.path.endswith(".gguf"):
            continue
        path = pointer_path(cache_dir, resolution.repo, resolution.commit, remote.path)
        try:
            out[remote.path] = read_gguf_metadata(path)
        except (ValueError, OSError) as err:  # a .gguf that is not one: the engine will say so
            log.warning("cannot read the GGUF header of %s: %s", remote.path, err)
    return out


def _main_file(cache_dir: Path, resolution: Resolution) -> str | None:
    """The repo path of ``{model_path}`` when it is a file (``None`` for a folder)."""
    from . import model_path

    main = model_path(cache_dir, resolution)
    snapshot = main
    while snapshot.parent.name != "snapshots" and snapshot != snapshot.parent:
        snapshot = snapshot.parent
    return main.relative_to(snapshot).as_posix() if main != snapshot else None


def local_info(path: str) -> WeightsInfo:
    """Size and quantisation of a ``source.path`` (a GGUF file's header, a folder's total)."""
    location = Path(path).expanduser()
    try:
        if location.is_file():
            st = location.stat()
            is_gguf = location.suffix == ".gguf"
            quant = _gguf_quant(str(location), st.st_mtime_ns) if is_gguf else None
            return WeightsInfo(size=st.st_size, quantization=quant)
        if location.is_dir():
            return WeightsInfo(
                size=sum(p.stat().st_size for p in location.rglob("*") if p.is_file())
            )
    except OSError:
        pass
    return WeightsInfo()


@lru_cache(maxsize=256)
def _gguf_quant(path: str, mtime_ns: int) -> str | None:
    from . import read_gguf_metadata

    try:
        return read_gguf_metadata(path).get("quantization")
    except (ValueError, OSError):
        return None
