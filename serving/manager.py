"""Model lifecycle: which versions are loaded, their states, labels, and request routing.

Behaves as TF Serving's AspiredVersionsManager with its AvailabilityPreservingPolicy:
* each model's base path is scanned every `--file_system_poll_wait_seconds`; the version policy
  names the versions that should be loaded ("aspired");
* a new version is loaded (and warmed up) while the old one keeps serving; an old version is
  unloaded only once an aspired version is AVAILABLE, so there is never a moment without a
  model; a version being unloaded takes no new requests and is released after its in-flight
  requests finish (leases);
* a version that fails to load is retried `--max_num_load_retries` times, then left in END with
  its error while the previous version keeps serving; it is tried again only after it leaves
  the directory and comes back;
* states START → LOADING → AVAILABLE → UNLOADING → END are kept per version for the life of the
  process, as GetModelStatus reports them.

All state lives on the event loop thread; loading runs on one loader thread (TF Serving loads
serially by default), so requests are never blocked by a load.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from tensorflow_serving.config import model_server_config_pb2

from serving import version_policy
from serving.errors import ServingError, failed_precondition, invalid_argument, not_found
from serving.savedmodel import LoadError, LoadedModel

log = logging.getLogger(__name__)

ModelConfig = model_server_config_pb2.ModelConfig
ModelServerConfig = model_server_config_pb2.ModelServerConfig


class State(enum.IntEnum):
    """ModelVersionStatus.State values."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(eq=False)
class ServableVersion:
    """One version of one model, from START to END."""

    model: str
    version: int
    path: Path
    state: State = State.START
    error: ServingError | None = None
    loaded: LoadedModel | None = None
    leases: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def id_text(self) -> str:
        """`{name: fashion version: 2}`, as TF Serving logs a servable id."""
        return f"{{name: {self.model} version: {self.version}}}"

    def acquire(self) -> None:
        self.leases += 1
        self._idle.clear()

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


@dataclass(eq=False)
class ModelEntry:
    config: ModelConfig
    versions: dict[int, ServableVersion] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    active: bool = True
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    poll_task: asyncio.Task | None = None
    scan_note: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def available(self) -> list[ServableVersion]:
        return [sv for sv in self.versions.values() if sv.state == State.AVAILABLE]


@dataclass(frozen=True)
class ManagerSettings:
    poll_wait_seconds: float = 1.0
    allow_version_labels_for_unavailable_models: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error: ServingError | None


class ModelManager:
    """Owns every model's versions; `apply_config` changes the set of models."""

    def __init__(self, settings: ManagerSettings, load: Callable[[Path], LoadedModel],
                 run_blocking: Callable[[Callable, Path], "asyncio.Future[LoadedModel]"]):
        self._settings = settings
        self._load_version = load
        self._run_blocking = run_blocking
        self._models: dict[str, ModelEntry] = {}
        self._config_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()
        self.unload_hooks: list[Callable[[ServableVersion], None]] = []
        self.config: ModelServerConfig | None = None  # the config last applied

    # --- configuration ------------------------------------------------------------------------

    async def apply_config(self, config: ModelServerConfig, *, initial: bool = False) -> list[ServableVersion]:
        """Serve exactly the models of `config`; returns the versions of new models that failed to load.

        New models are loaded before this returns (TF Serving waits for them); version changes
        of existing models happen in the background. A config whose labels point at versions
        that are not AVAILABLE is refused before anything changes."""
        async with self._config_lock:
            wanted = {model.name: model for model in config.model_config_list.config}
            self._check_labels(wanted)
            self.config = config
            new_entries = []
            for name, model_config in wanted.items():
                entry = self._models.get(name)
                if entry is None or not entry.active:
                    entry = ModelEntry(model_config, versions=entry.versions if entry else {})
                    self._models[name] = entry
                    new_entries.append(entry)
                    log.info("Adding model %s from base path %s (%s)", name, model_config.base_path,
                             version_policy.describe(model_config.model_version_policy))
                else:
                    changed = (entry.config.base_path != model_config.base_path
                               or entry.config.model_version_policy != model_config.model_version_policy)
                    entry.config = model_config
                    if changed:
                        log.info("Model %s: new base path or version policy, rescanning", name)
                        self._spawn(self._reconcile(entry))
                entry.labels = dict(model_config.version_labels)
            for name, entry in self._models.items():
                if entry.active and name not in wanted:
                    log.info("Removing model %s", name)
                    entry.active = False
                    if entry.poll_task:
                        entry.poll_task.cancel()
                    self._spawn(self._reconcile(entry))
            await asyncio.gather(*(self._first_load(entry, wait_for_versions=initial) for entry in new_entries))
            for entry in new_entries:
                entry.poll_task = asyncio.create_task(self._poll(entry), name=f"poll-{entry.name}")
            return [sv for entry in new_entries for sv in entry.versions.values()
                    if sv.state == State.END and sv.error is not None]

    def _check_labels(self, wanted: dict[str, ModelConfig]) -> None:
        allow_new = self._settings.allow_version_labels_for_unavailable_models
        for name, model_config in wanted.items():
            entry = self._models.get(name)
            current = entry.labels if entry and entry.active else {}
            for label, version in model_config.version_labels.items():
                if allow_new and current.get(label, version) == version:
                    continue  # TF Serving: a new label, or one that keeps its version
                serving = entry.versions.get(version) if entry and entry.active else None
                if serving is None or serving.state != State.AVAILABLE:
                    log.warning("Version %d of model %s is not AVAILABLE; --allow_version_labels_for_unavailable_"
                                "models=true lets a new label point at a version that is still loading",
                                version, name)
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {name}, which is not currently "
                        f"available for inference")

    # --- routing ------------------------------------------------------------------------------

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> ServableVersion:
        """The AVAILABLE version a request addresses, with TF Serving's errors."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        entry = self._models.get(name)
        entry = entry if entry and entry.active else None
        if label:
            version = self.label_version(name, label)
        if version is not None:
            serving = entry.versions.get(version) if entry else None
            if serving is None or serving.state != State.AVAILABLE:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return serving
        available = entry.available() if entry else []
        if not available:
            raise not_found(f"Servable not found for request: Latest({name})")
        return max(available, key=lambda sv: sv.version)

    @contextlib.contextmanager
    def lease(self, name: str, version: int | None = None, label: str | None = None) -> Iterator[ServableVersion]:
        """Hold a version for the duration of a request: it is not unloaded meanwhile."""
        serving = self.resolve(name, version, label)
        serving.acquire()
        try:
            yield serving
        finally:
            serving.release()

    def label_version(self, name: str, label: str) -> int:
        """The version a label of an active model points at."""
        entry = self._models.get(name)
        if entry is None or not entry.active or label not in entry.labels:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return entry.labels[label]

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Every version ever seen (highest first), or one, as GetModelStatus reports them."""
        entry = self._models.get(name)
        if version is not None:
            serving = entry.versions.get(version) if entry else None
            if serving is None:
                raise not_found(f"Could not find version {version} of model {name}")
            return [VersionStatus(version, serving.state, serving.error)]
        if entry is None or not entry.versions:
            raise not_found(f"Could not find any versions of model {name}")
        return [VersionStatus(sv.version, sv.state, sv.error)
                for sv in sorted(entry.versions.values(), key=lambda sv: sv.version, reverse=True)]

    # --- lifecycle ----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop polling and unload every version (after its in-flight requests)."""
        for task in [e.poll_task for e in self._models.values() if e.poll_task] + list(self._background):
            task.cancel()
        for entry in self._models.values():
            for serving in entry.available():
                await self._unload(serving)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _first_load(self, entry: ModelEntry, *, wait_for_versions: bool) -> None:
        """Load a new model's aspired versions; at start-up, wait until some version exists."""
        while not await self._reconcile(entry) and wait_for_versions:
            await asyncio.sleep(max(self._settings.poll_wait_seconds, 1.0))

    async def _poll(self, entry: ModelEntry) -> None:
        wait = self._settings.poll_wait_seconds
        if wait <= 0:
            return  # TF Serving: 0 scans once (done by _first_load), < 0 never rescans
        while True:
            await asyncio.sleep(wait)
            await self._reconcile(entry)

    async def _reconcile(self, entry: ModelEntry) -> bool:
        """Bring loaded versions in line with disk and policy; False when nothing is on disk."""
        async with entry.lock:
            if not entry.active:
                for serving in entry.available():
                    await self._unload(serving)
                return True
            base = Path(entry.config.base_path)
            try:
                on_disk = await asyncio.to_thread(version_policy.version_directories, base)
            except OSError as exc:
                self._note(entry, f"cannot list base path {base} of model {entry.name}: {exc.strerror or exc}")
                return False
            if not on_disk:
                self._note(entry, f"No versions of servable {entry.name} found under base path {base}. "
                                  f"Did you forget to name your leaf directory as a number (eg. '/1/')?")
            else:
                self._note(entry, None)
            aspired = version_policy.aspired_versions(entry.config.model_version_policy, set(on_disk))
            entry.failed &= aspired
            for version in sorted(aspired, reverse=True):
                current = entry.versions.get(version)
                if version in entry.failed or (current and current.state in (State.LOADING, State.AVAILABLE)):
                    continue
                await self._load(entry, version, on_disk[version])
            retiring = [sv for sv in entry.available() if sv.version not in aspired]
            if retiring and (not aspired or any(entry.versions[v].state == State.AVAILABLE
                                                for v in aspired if v in entry.versions)):
                for serving in retiring:
                    await self._unload(serving)
            return bool(on_disk)

    def _note(self, entry: ModelEntry, problem: str | None) -> None:
        """Log a scan problem once, not at every poll."""
        if problem and problem != entry.scan_note:
            log.warning("%s", problem)
        entry.scan_note = problem

    async def _load(self, entry: ModelEntry, version: int, path: Path) -> None:
        serving = ServableVersion(entry.name, version, path)
        entry.versions[version] = serving
        log.info("Approving load for servable version %s", serving.id_text)
        serving.state = State.LOADING
        attempts = 1 + max(self._settings.max_num_load_retries, 0)
        for attempt in range(1, attempts + 1):
            try:
                serving.loaded = await self._run_blocking(self._load_version, path)
                break
            except Exception as exc:  # any load failure is recorded in the version's status
                error = LoadError.from_exception(exc)
                log.error("Loading servable: %s failed: %s", serving.id_text, error)
                if attempt == attempts:
                    serving.state, serving.error = State.END, error
                    entry.failed.add(version)
                    return
                log.info("Retrying load of servable %s in %.1f s (attempt %d of %d)", serving.id_text,
                         self._settings.load_retry_interval_seconds, attempt + 1, attempts)
                await asyncio.sleep(self._settings.load_retry_interval_seconds)
        serving.state = State.AVAILABLE
        log.info("Successfully loaded servable version %s", serving.id_text)

    async def _unload(self, serving: ServableVersion) -> None:
        serving.state = State.UNLOADING
        log.info("Quiescing servable version %s", serving.id_text)
        await serving.wait_idle()
        for hook in self.unload_hooks:
            hook(serving)
        serving.loaded = None
        serving.state = State.END
        log.info("Done unloading servable version %s", serving.id_text)
