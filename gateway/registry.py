"""The models the gateway fronts: their settings, which version answers each request, readiness.

For every model (the default one plus those under `models:` in the settings) the registry holds
its per-model settings - thresholds, labels, default_version, canary, shadow - which a reloaded
config file replaces without a restart, and routes each request to a model version with the
rules of gateway/routing.py over what the fleet (gateway/fleet.py) serves right now.

Readiness - /readyz and gRPC health - is "some healthy model server serves a usable version of the
default model, and the gateway is not draining". Changes of readiness and of the version default
traffic goes to are logged once each.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

from gateway.types import ServedVersion
from gateway.errors import GatewayError, ModelNotFound, Unavailable
from gateway.fleet import NOT_SERVED, Fleet
from gateway.metrics import Metrics
from gateway.routing import Route, TrafficSplit, VersionRequest, choose, default_route
from gateway.settings import ModelSettings, Settings
from gateway.thresholds import check_labels

log = logging.getLogger(__name__)

_SHOWN_NAME_CHARS = 64  # an unknown model's name is echoed in the error up to this length

ReadinessListener = Callable[[bool], Awaitable[None]]


@dataclass
class FrontedModel:
    name: str
    settings: ModelSettings
    canary: TrafficSplit = field(init=False)
    shadow: TrafficSplit = field(init=False)
    default: tuple[int | None, str] = (None, "none")   # the last logged default version and how it is chosen

    def __post_init__(self) -> None:
        self.canary = TrafficSplit(f"canary:{self.name}")
        self.shadow = TrafficSplit(f"shadow:{self.name}")


@dataclass(frozen=True)
class Planned:
    """Where one request goes: its route, the version it is decoded for, and a shadow copy's version."""

    route: Route
    primary: ServedVersion
    shadow: ServedVersion | None


class ModelRegistry:
    def __init__(self, fleet: Fleet, settings: Settings, metrics: Metrics):
        self._fleet = fleet
        self._metrics = metrics
        self.default_model = settings.default_model
        self._entries = {name: FrontedModel(name, settings.model_settings(name)) for name in settings.model_names}
        self._listeners: list[ReadinessListener] = []
        self._draining = False
        self._ready = False
        self._published = False
        self._publishing = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        metrics.ready.set(0)
        fleet.add_listener(self._fleet_changed)

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def draining(self) -> bool:
        return self._draining

    def entries(self) -> list[FrontedModel]:
        return list(self._entries.values())

    def entry(self, name: str) -> FrontedModel:
        try:
            return self._entries[name]
        except KeyError:
            shown = name if len(name) <= _SHOWN_NAME_CHARS else name[:_SHOWN_NAME_CHARS] + "..."
            raise ModelNotFound(f"unknown model {shown!r}; this gateway serves {', '.join(self._entries)}") from None

    def add_listener(self, listener: ReadinessListener) -> None:
        """`await listener(ready)` runs on every readiness change."""
        self._listeners.append(listener)

    def validate(self, info: ServedVersion) -> None:
        """ValueError when the model's rules cannot apply to this version (the fleet asks)."""
        check_labels(info.labels, self.entry(info.name).settings.thresholds)

    # -- routing ---------------------------------------------------------------------------------

    async def plan(self, name: str, request: VersionRequest = VersionRequest(),
                   load: Callable[[int], int] = lambda version: 0) -> Planned:
        """Where a request for model `name` goes. `load(version)`: images of that version queued or
        in flight now, which balances replicas that each answer with their own newest version.
        ModelNotFound for an unknown model; VersionNotFound for a version no model server serves or
        an undefined label (gateway/routing.py; a request with both a version and a label is refused
        as InvalidArgument when its VersionRequest is made); Unavailable when no model server serves
        the model now."""
        entry = self.entry(name)
        served = self._fleet.served(name)
        if not served:  # just started, or a version just moved on: look (at most every 0.2 s) before failing
            await self._fleet.fresh()
            served = self._fleet.served(name)
        if not served:
            raise self._unavailable(name)
        route = choose(name, request, entry.settings, served, lambda newest: _least_loaded(newest, load),
                       entry.canary, entry.shadow)
        shadow = self._fleet.info(name, route.shadow) if route.shadow is not None else None
        return Planned(route, self._fleet.info(name, route.version), shadow)

    def replacement(self, gone: ServedVersion) -> ServedVersion | None:
        """For default traffic whose version no model server serves any more: the version default
        traffic goes to now, when pixels decoded for `gone` fit it."""
        version, _ = default_route(self.entry(gone.name).settings, self._fleet.served(gone.name),
                                   lambda newest: _least_loaded(newest, lambda version: 0))
        if version is None or version == gone.version:
            return None
        fresh = self._fleet.info(gone.name, version)
        return fresh if fresh.compatible(gone) else None

    def current(self, name: str) -> tuple[ServedVersion | None, str]:
        """The version default traffic goes to (the newest served one while each endpoint answers
        with its own), and how it is chosen."""
        served = self._fleet.served(name)
        version, mode = default_route(self.entry(name).settings, served, None)
        if version is None and served:
            version = max(v for versions in served.values() for v in versions)
        return (self._fleet.info(name, version) if version is not None else None), mode

    def state(self, name: str) -> str:
        return self._fleet.model_state(name)[0]

    def fleet_view(self) -> dict:
        """GET /v1/fleet: endpoints with their versions and health, and each model's routing."""
        models = {}
        for entry in self._entries.values():
            served = self._fleet.served(entry.name)
            state, problem = self._fleet.model_state(entry.name)
            version, mode = default_route(entry.settings, served, None)
            counts: dict[int, int] = {}
            for versions in served.values():
                for v in versions:
                    counts[v] = counts.get(v, 0) + 1
            labels = entry.settings.labels
            models[entry.name] = {
                "state": state, "problem": problem, "default_version": version, "mode": mode,
                "labels": dict(labels),
                "canary": _share(entry.settings.canary, entry.settings),
                "shadow": _share(entry.settings.shadow, entry.settings),
                "versions": [{"version": v, "endpoints": n, "labels": sorted(k for k, lv in labels.items() if lv == v),
                              "input": self._fleet.info(entry.name, v).input.text,
                              "classes": len(self._fleet.info(entry.name, v).labels)}
                             for v, n in sorted(counts.items())],
            }
        return {"backend": self._fleet.target_text, "balancing": "channel" if self._fleet.channel_mode else "endpoints",
                "healthy_endpoints": self._fleet.healthy_count, "endpoints": self._fleet.view(), "models": models}

    # -- settings, readiness -------------------------------------------------------------------

    def update(self, settings: Settings) -> list[str]:
        """Take the per-model settings of a reloaded config; returns what changed. A model whose new
        rules do not fit a version it serves keeps its old settings (logged)."""
        changed = []
        for entry in self._entries.values():
            new = settings.model_settings(entry.name)
            if new == entry.settings:
                continue
            try:
                for version in {v for vs in self._fleet.served(entry.name).values() for v in vs}:
                    check_labels(self._fleet.info(entry.name, version).labels, new.thresholds)
            except ValueError as exc:
                log.error("settings of model %s not applied: %s", entry.name, exc)
                continue
            entry.settings = new
            changed.append(entry.name)
        if changed:
            self._fleet.forget_unusable()
            for name in changed:  # versions described earlier, not served now, may come back
                for info in self._fleet.described(name):
                    try:
                        check_labels(info.labels, self._entries[name].settings.thresholds)
                    except ValueError as exc:
                        self._fleet.reject(info, f"model {name} version {info.version}: {exc}")
            self._fleet_changed()
        return changed

    async def drain(self) -> None:
        """From now on, not ready (shutting down)."""
        self._draining = True
        self._fleet_changed()
        await self._publish()

    def _unavailable(self, name: str) -> GatewayError:
        if self._fleet.members and not self._fleet.healthy_count:
            return self._fleet.circuit_open()
        state, problem = self._fleet.model_state(name)
        return Unavailable(f"model {name} is not available yet ({state.lower()}"
                           + (f": {problem})" if problem and state != NOT_SERVED else ")"))

    def _fleet_changed(self) -> None:
        for entry in self._entries.values():
            served = self._fleet.served(entry.name)
            self._metrics.model_available.labels(entry.name).set(1 if served else 0)
            default = default_route(entry.settings, served, None)
            if default != entry.default:
                entry.default = default
                self._metrics.model_version.labels(entry.name).set(default[0] or 0)
                log.info("default version", extra={"fields": {
                    "event": "default_version", "model": entry.name, "version": default[0], "mode": default[1],
                    "served": sorted({v for vs in served.values() for v in vs})}})
        ready = not self._draining and bool(self._fleet.served(self.default_model))
        if ready != self._ready:
            self._ready = ready
            self._metrics.ready.set(1 if ready else 0)
            log.info("readiness", extra={"fields": {"event": "readiness", "ready": ready}})
            task = asyncio.ensure_future(self._publish())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _publish(self) -> None:
        """Tell the listeners (gRPC health) the latest readiness, in order, once per change."""
        async with self._publishing:
            ready = self._ready
            if ready == self._published:
                return
            self._published = ready
            for listener in self._listeners:
                await listener(ready)


def _least_loaded(newest: Mapping[str, int], load: Callable[[int], int]) -> str:
    """Of two endpoints picked at random, the one whose version has fewer outstanding images per
    endpoint answering with it (power of two choices)."""
    addresses = list(newest)
    if len(addresses) == 1:
        return addresses[0]
    holders = collections.Counter(newest.values())
    a, b = random.sample(addresses, 2)
    cost = {x: load(newest[x]) / holders[newest[x]] for x in (a, b)}
    return a if cost[a] <= cost[b] else b


def _share(share, settings: ModelSettings) -> dict | None:
    if share is None:
        return None
    return {"version": settings.resolve(share), "label": share.label, "percent": share.percent}
