"""What the gateway knows about each model it fronts, kept current by a watcher task.

For every model (the default one plus those under `models:` in the settings) the registry holds the
model server's state for it and, once a version is AVAILABLE, the `ModelInfo` requests are pinned
to: version, input size and channels, labels. The watcher re-checks GetModelStatus every
`health_check_interval_seconds` (more often while not ready, so the gateway is ready soon after
the model server is) and switches to a newer version only once its metadata and labels are
fetched, so a request never meets a version it was not decoded for.

Readiness - /readyz and gRPC health - is "the default model is AVAILABLE and we are not draining".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from gateway.backend import AVAILABLE, Backend, ModelInfo, ModelNotServed
from gateway.errors import GatewayError, ModelNotFound, Unavailable
from gateway.metrics import Metrics
from gateway.settings import ModelSettings, Settings
from gateway.thresholds import check_labels

log = logging.getLogger(__name__)

NOT_READY_POLL_SECONDS = 0.2
# States the gateway reports beside TF Serving's own (AVAILABLE, LOADING, ...).
UNREACHABLE = "UNAVAILABLE"      # the model server did not answer
NOT_SERVED = "NOT_FOUND"         # the model server does not know the model
UNUSABLE = "UNUSABLE"            # served, but its signature or labels do not fit the gateway
_SHOWN_NAME_CHARS = 64           # an unknown model's name is echoed in the error up to this length

ReadinessListener = Callable[[bool], Awaitable[None]]


@dataclass
class ModelEntry:
    name: str
    settings: ModelSettings
    info: ModelInfo | None = None
    state: str = "UNKNOWN"
    problem: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def usable(self) -> bool:
        return self.info is not None and self.state == AVAILABLE


class ModelRegistry:
    def __init__(self, backend: Backend, settings: Settings, metrics: Metrics):
        self._backend = backend
        self._metrics = metrics
        self._interval = settings.health_check_interval_seconds
        self.default_model = settings.default_model
        self._entries = {name: ModelEntry(name, settings.model_settings(name)) for name in settings.model_names}
        self._listeners: list[ReadinessListener] = []
        self._draining = False
        self._ready = False
        metrics.ready.set(0)

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def draining(self) -> bool:
        return self._draining

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def entry(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            shown = name if len(name) <= _SHOWN_NAME_CHARS else name[:_SHOWN_NAME_CHARS] + "..."
            raise ModelNotFound(f"unknown model {shown!r}; this gateway serves {', '.join(self._entries)}") from None

    def add_listener(self, listener: ReadinessListener) -> None:
        """`await listener(ready)` runs on every readiness change."""
        self._listeners.append(listener)

    async def info(self, name: str) -> ModelInfo:
        """The version to send requests for `name` to; fetched now if not known yet."""
        entry = self.entry(name)
        if entry.info is None:
            await self.refresh(name)
        if entry.info is None:
            raise Unavailable(f"model {name} is not available yet ({entry.state.lower()})")
        return entry.info

    async def refresh(self, name: str) -> ModelEntry:
        """Re-read the model's state (and info, if the version changed). Concurrent calls share one."""
        entry = self.entry(name)
        if entry.lock.locked():
            async with entry.lock:  # someone is refreshing it: wait for their result
                return entry
        async with entry.lock:
            await self._refresh(entry)
        await self._update_readiness()
        return entry

    async def _refresh(self, entry: ModelEntry) -> None:
        try:
            versions = await self._backend.model_status(entry.name)
            available = [v.version for v in versions if v.state == AVAILABLE]
            if not available:
                newest = max(versions, key=lambda v: v.version, default=None)
                self._set(entry, newest.state if newest else NOT_SERVED, "no version is AVAILABLE")
                return
            version = max(available)
            if entry.info is None or entry.info.version != version:
                entry.info = await self._load(entry, version)
                log.info("model version in use", extra={"fields": {
                    "event": "model_version", "model": entry.name, "version": version,
                    "input": f"{entry.info.input.height}x{entry.info.input.width}x{entry.info.input.channels}",
                    "labels": len(entry.info.labels)}})
            self._set(entry, AVAILABLE, None)
        except ModelNotServed as exc:
            self._set(entry, NOT_SERVED, exc.message)
        except _Unusable as exc:
            self._set(entry, UNUSABLE, str(exc))
        except GatewayError as exc:
            self._set(entry, UNREACHABLE, exc.message)

    async def _load(self, entry: ModelEntry, version: int) -> ModelInfo:
        signature = await self._backend.signature(entry.name, version)
        labels = await self._backend.labels(entry.name, signature)
        try:
            check_labels(labels, entry.settings.thresholds)
        except ValueError as exc:
            raise _Unusable(f"model {entry.name} version {version}: {exc}") from None
        return ModelInfo(entry.name, signature.version, signature.input_name, signature.input, labels)

    def _set(self, entry: ModelEntry, state: str, problem: str | None) -> None:
        if state != entry.state:
            level = logging.INFO if state == AVAILABLE else logging.WARNING
            log.log(level, "model state", extra={"fields": {
                "event": "model_state", "model": entry.name, "state": state, "problem": problem}})
        entry.state, entry.problem = state, problem
        self._metrics.model_available.labels(entry.name).set(1 if entry.usable else 0)
        if entry.info is not None:
            self._metrics.model_version.labels(entry.name).set(entry.info.version)

    async def _update_readiness(self) -> None:
        ready = not self._draining and self._entries[self.default_model].usable
        if ready == self._ready:
            return
        self._ready = ready
        self._metrics.ready.set(1 if ready else 0)
        log.info("readiness", extra={"fields": {"event": "readiness", "ready": ready}})
        for listener in self._listeners:
            await listener(ready)

    async def drain(self) -> None:
        """From now on, not ready (shutting down)."""
        self._draining = True
        await self._update_readiness()

    async def watch(self) -> None:
        """Refresh every model forever (a task; cancel it to stop)."""
        while True:
            for name in self._entries:
                try:
                    await self.refresh(name)
                except Exception:  # the watcher must outlive any one bad answer; it is logged
                    log.exception("refreshing model %s failed", name)
            await asyncio.sleep(self._interval if self._ready else min(self._interval, NOT_READY_POLL_SECONDS))


class _Unusable(Exception):
    """The model is served but the gateway cannot use it (its message says why)."""
