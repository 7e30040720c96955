"""The model server fleet as the gateway sees it: every endpoint, what it serves, how healthy it is.

The backend target (gateway/targets.py) names the endpoints: a static list, or a DNS name the fleet
resolves itself every `backend_resolve_seconds` (and soon after an endpoint fails), so pods that
appear or disappear change routing without a restart and without failing a request. Each endpoint
has its own channel (gateway/backend.py) and its own health (gateway/resilience.py).

A watcher polls every endpoint's GetModelStatus for every model the gateway fronts. When an
endpoint reports a version AVAILABLE that the fleet has not described yet, its input spec and
labels are fetched from that endpoint once and cached per (model, version): versions may differ in
both, and a request is always decoded for, and sent to, one version. Only then does the version
count as served (`served()`), so routing never picks a version it cannot prepare a request for.

`predict()` sends a batch to the least loaded healthy endpoint serving its version (power of two
choices on Predict calls in flight). A call that fails as unhealthy counts against that endpoint
and is retried on another one within the retry budget; an endpoint that answers NOT_FOUND no longer
serves the version (it moved on) and the batch goes to another endpoint that does, without
spending the budget; when none is left, VersionGone lets the caller choose again.

With `backend_balancing: channel`, or a single HOST:PORT, the fleet has one endpoint: the whole
target on one gRPC round_robin channel (every replica then must serve the same versions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Callable

import grpc

from gateway.backend import AVAILABLE, CallFailed, Endpoint, ModelNotServed, VersionGone, channel_options
from gateway.types import Scores, ServedVersion, VersionState
from gateway.errors import CircuitOpen, GatewayError
from gateway.metrics import Metrics
from gateway.resilience import EndpointHealth, RetryBudget
from gateway.settings import Settings
from gateway.targets import TargetError, parse_target, resolve

log = logging.getLogger(__name__)

FAST_POLL_SECONDS = 0.2        # while a model is not served or an endpoint is out
RETRY_UNUSABLE_SECONDS = 30.0  # a version the gateway cannot use is looked at again this often
MIN_RESOLVE_SECONDS = 1.0      # re-resolution on failures is at most this frequent
# States the fleet reports for a model beside TF Serving's own (AVAILABLE, LOADING, ...).
UNREACHABLE = "UNAVAILABLE"    # no model server answered
NOT_SERVED = "NOT_FOUND"       # the model servers do not know the model
UNUSABLE = "UNUSABLE"          # served, but its signature or labels do not fit the gateway


@dataclass
class Member:
    """One endpoint of the fleet and what its last status check said."""

    endpoint: Endpoint
    health: EndpointHealth
    versions: dict[str, tuple[VersionState, ...]] = field(default_factory=dict)  # model -> last status
    polled: bool = False

    @property
    def address(self) -> str:
        return self.endpoint.address

    def available(self, model: str) -> set[int]:
        return {v.version for v in self.versions.get(model, ()) if v.state == AVAILABLE}

    def forget(self, model: str, version: int) -> None:
        self.versions[model] = tuple(v for v in self.versions.get(model, ()) if v.version != version)


class Fleet:
    def __init__(self, settings: Settings, metrics: Metrics, models: list[str],
                 credentials: grpc.ChannelCredentials | None = None,
                 validate: Callable[[ServedVersion], None] = lambda info: None):
        """`validate(info)` raises ValueError for a version the gateway cannot use (its labels do
        not fit the model's thresholds, say)."""
        self._settings = settings
        self._metrics = metrics
        self._models = list(models)
        self._credentials = credentials
        self._validate = validate
        self._budget = RetryBudget(settings.retry_budget_percent)
        self.target = parse_target(settings.backend)
        self.target_text = settings.backend
        self._last_round = float("-inf")     # when the last status round ended (loop time)
        self.members: dict[str, Member] = {}
        self._infos: dict[tuple[str, int], ServedVersion] = {}
        self._unusable: dict[tuple[str, int], tuple[str, float]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._served: dict[str, dict[str, frozenset[int]]] = {}  # model -> served(model), until a change
        self._polling: asyncio.Task | None = None
        self._watching = False               # run() is under way
        self._resolver: asyncio.Task | None = None
        self._resolve_now = asyncio.Event()
        self._closing: set[asyncio.Task] = set()
        self._set_members(self._static_addresses())

    # -- what the rest of the gateway asks ---------------------------------------------------

    @property
    def channel_mode(self) -> bool:
        return self._settings.backend_balancing == "channel" or self.target.kind == "single"

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` runs after every status round and every endpoint change."""
        self._listeners.append(listener)

    def served(self, model: str) -> dict[str, frozenset[int]]:
        """For each healthy endpoint that serves `model`: the versions it serves that the gateway can
        use. Asked by every request: kept until the fleet changes (`_changed`)."""
        cached = self._served.get(model)
        if cached is not None:
            return cached
        out = {}
        for member in self.members.values():
            if member.health.healthy and member.polled:
                usable = frozenset(v for v in member.available(model)
                                   if (model, v) in self._infos and (model, v) not in self._unusable)
                if usable:
                    out[member.address] = usable
        self._served[model] = out
        return out

    def info(self, model: str, version: int) -> ServedVersion:
        """What the gateway knows of a served version (KeyError when it knows nothing)."""
        return self._infos[(model, version)]

    def model_state(self, model: str) -> tuple[str, str | None]:
        """The model's state across the fleet, and what is wrong when it is not AVAILABLE."""
        if self.served(model):
            return AVAILABLE, None
        unusable = [reason for (name, _), (reason, _) in self._unusable.items() if name == model]
        if unusable:
            return UNUSABLE, unusable[-1]
        reachable = [m for m in self.members.values() if m.polled and m.health.healthy]
        if not reachable:
            return UNREACHABLE, "no model server answers" if self.members else "no model server endpoint is known"
        states = [s for m in reachable for s in m.versions.get(model, ())]
        if not states:
            return NOT_SERVED, f"model {model} is not loaded on any model server"
        newest = max(states, key=lambda s: s.version)
        return newest.state, "no version is AVAILABLE"

    def endpoints_serving(self, model: str) -> int:
        """How many model-server endpoints take `model`'s Predict calls (at least 1): the healthy ones
        serving it, or in channel mode the addresses behind the channel (grpc balances them, unseen
        here; a DNS name counts as one)."""
        served = len(self.served(model))
        if self.channel_mode and served:
            return max(1, len(self.target.addresses))
        return max(1, served)

    @property
    def healthy_count(self) -> int:
        return sum(1 for m in self.members.values() if m.health.healthy)

    def retry_after(self) -> float:
        """When an endpoint may be back at the earliest (0: unknown, try again now)."""
        waits = [m.health.retry_after() for m in self.members.values()]
        return min(waits, default=0.0)

    def circuit_open(self) -> CircuitOpen:
        """The error while every endpoint is ejected."""
        wait = max(self.retry_after(), FAST_POLL_SECONDS)
        return CircuitOpen(f"no model server is available; retry in {wait:.1f} s", retry_after=wait)

    def _pick(self, addresses: list[str]) -> str:
        """The less loaded of two endpoints picked at random (power of two choices)."""
        if len(addresses) == 1:
            return addresses[0]
        a, b = random.sample(addresses, 2)
        return a if self._load(a) <= self._load(b) else b

    async def predict(self, info: ServedVersion, pixels: bytes, count: int,
                      deadline: float) -> tuple[ServedVersion, list[Scores]]:
        """Scores from an endpoint serving `info.version`. VersionGone when none serves it any more;
        Unavailable when no healthy endpoint is left; DeadlineExceeded, Overloaded as the endpoint says."""
        loop = asyncio.get_running_loop()
        self._budget.earn()
        tried: set[str] = set()
        failed: CallFailed | None = None
        while True:
            member = self._choose(info.name, info.version, tried)
            if member is None:
                if failed is not None:
                    raise failed
                if not self.healthy_count:
                    raise self.circuit_open()
                raise VersionGone(f"no model server serves model {info.name} version {info.version} any more")
            try:
                rows = await member.endpoint.predict(info, pixels, count, deadline)
            except VersionGone:
                member.forget(info.name, info.version)   # it moved on: ask it to what, now
                tried.add(member.address)
                self._poll_soon()
                self._changed()
                continue
            except CallFailed as exc:
                failed = exc
                if member.health.record_failure():
                    self._log_health(member, "ejected")
                self._resolve_soon()
                if loop.time() < deadline and self._budget.spend():
                    self._metrics.backend_retries.labels("Predict").inc()
                    log.info("retrying Predict for model %s after a failure on %s", info.name, member.address)
                    tried.add(member.address)
                    continue
                raise
            member.health.record_success()
            self._metrics.count_endpoint_images(member.address, info.name, info.version, count)
            return info, rows

    # -- the watcher ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll every endpoint forever (and re-resolve a dns target); a task: cancel it to stop.
        A round that fails unexpectedly is logged and the next one runs: the watcher never ends
        by itself."""
        self._watching = True
        self._start_resolver()
        try:
            while True:
                try:
                    await self.poll()
                except Exception:
                    log.exception("model server status round failed")
                await asyncio.sleep(FAST_POLL_SECONDS if self._needs_fast_poll()
                                    else self._settings.health_check_interval_seconds)
        finally:
            self._watching = False
            await self._stop_resolver()

    async def poll(self) -> None:
        """One status round over every endpoint (concurrent callers share one round)."""
        await asyncio.shield(self._poll_soon())

    async def fresh(self, max_age: float = FAST_POLL_SECONDS) -> None:
        """Make what the fleet knows at most `max_age` seconds old: wait for the round under way,
        or run one. (A request that finds nothing served asks this before it fails.)"""
        if self._polling is not None and not self._polling.done():
            await asyncio.shield(self._polling)
        elif asyncio.get_running_loop().time() - self._last_round > max_age:
            await self.poll()

    def _poll_soon(self) -> asyncio.Future:
        if self._polling is None or self._polling.done():
            self._polling = asyncio.ensure_future(self._poll_all())
        return self._polling

    async def reconfigure(self, settings: Settings) -> None:
        """Apply a changed `backend` (and friends) from a reloaded config file."""
        try:
            target = parse_target(settings.backend)
        except TargetError as exc:
            log.error("backend %r is not usable: %s", settings.backend, exc)
            return
        self._settings = settings
        if target != self.target:
            log.info("backend target changed", extra={"fields": {"event": "backend", "backend": settings.backend}})
            self.target, self.target_text = target, settings.backend
            if not self._resolving:
                await self._stop_resolver()
            self._set_members(self._static_addresses())
            if self._watching:
                self._start_resolver()
            self._resolve_now.set()
            self._polling = None  # a round under way asks the old endpoints: start one for the new ones
            await self.poll()

    async def close(self) -> None:
        await self._stop_resolver()
        if self._polling is not None:
            self._polling.cancel()
            await asyncio.gather(self._polling, return_exceptions=True)
        for member in list(self.members.values()):
            await member.endpoint.close()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def described(self, model: str) -> list[ServedVersion]:
        """Every version of `model` described so far, served now or not."""
        return [info for (name, _), info in self._infos.items() if name == model]

    def reject(self, info: ServedVersion, problem: str) -> None:
        """A described version no longer fits the model's settings: not used until they change."""
        self._unusable[(info.name, info.version)] = (problem, asyncio.get_running_loop().time())
        log.warning("model version unusable", extra={"fields": {
            "event": "model_version_unusable", "model": info.name, "version": info.version, "problem": problem}})
        self._changed()

    def forget_unusable(self) -> None:
        """Look at versions found unusable again (the settings that judged them changed)."""
        self._unusable.clear()

    def view(self) -> list[dict]:
        """Every endpoint with its health and the versions it reports, for GET /v1/fleet."""
        out = []
        for member in sorted(self.members.values(), key=lambda m: m.address):
            out.append({
                "address": member.address, "state": member.health.state, "reason": member.health.reason,
                "inflight": member.endpoint.inflight, "checked": member.polled,
                "models": {model: [{"version": v.version, "state": v.state,
                                    "usable": (model, v.version) in self._infos}
                                   for v in sorted(states, key=lambda s: s.version)]
                           for model, states in member.versions.items()},
            })
        return out

    # -- inside ------------------------------------------------------------------------------------

    def _static_addresses(self) -> list[str]:
        if self.channel_mode:
            return [self._settings.backend]
        return list(self.target.addresses)  # empty for dns until resolved

    def _set_members(self, addresses: list[str]) -> None:
        wanted = set(addresses)
        for address in [a for a in self.members if a not in wanted]:
            member = self.members.pop(address)
            log.info("model server endpoint removed", extra={"fields": {"event": "endpoint", "endpoint": address,
                                                                        "change": "removed"}})
            self._metrics.forget_endpoint(address)
            # In-flight calls may finish: the channel closes once they did (or after the request timeout).
            task = asyncio.ensure_future(member.endpoint.close(self._settings.request_timeout_seconds))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        for address in addresses:
            if address in self.members:
                continue
            self.members[address] = Member(self._make_endpoint(address), EndpointHealth(
                self._settings.circuit_failure_threshold, self._settings.circuit_open_seconds))
            if not self.channel_mode:
                log.info("model server endpoint added", extra={"fields": {"event": "endpoint", "endpoint": address,
                                                                          "change": "added"}})
        self._changed()

    def _make_endpoint(self, address: str) -> Endpoint:
        s = self._settings
        server_name = s.backend_tls_server_name
        if server_name is None and self.target.resolves and not self.channel_mode:
            server_name = self.target.host  # the certificate names the service, not each pod's address
        options = channel_options(s.backend_max_message_bytes, s.backend_keepalive_seconds,
                                  server_name if self._credentials is not None else None,
                                  round_robin=self.channel_mode)
        return Endpoint(address, metrics=self._metrics, call_timeout=s.backend_timeout_seconds,
                        options=options, credentials=self._credentials)

    def _load(self, address: str) -> tuple[int, int]:
        member = self.members[address]
        return (1 if member.health.failures else 0, member.endpoint.inflight)

    def _choose(self, model: str, version: int, tried: set[str]) -> Member | None:
        serving = [m.address for m in self.members.values()
                   if m.health.healthy and m.polled and version in m.available(model)]
        fresh = [a for a in serving if a not in tried]
        pool = fresh or [a for a in serving if len(serving) == 1]  # a lone endpoint may be retried
        return self.members[self._pick(pool)] if pool else None

    async def _poll_all(self) -> None:
        members = list(self.members.values())
        await asyncio.gather(*(self._poll_member(m) for m in members))
        self._last_round = asyncio.get_running_loop().time()
        self._changed()

    async def _poll_member(self, member: Member) -> None:
        answered = False
        for model in self._models:
            try:
                versions = await member.endpoint.model_status(model)
            except ModelNotServed:
                versions, answered = [], True
            except GatewayError:
                continue
            else:
                answered = True
            # Describe new versions before the endpoint is said to serve them: what it serves
            # changes in one step, from versions the gateway can use to versions it can use.
            for version in sorted({v.version for v in versions if v.state == AVAILABLE}):
                await self._describe(member, model, version)
            if self.members.get(member.address) is not member:
                return  # it left the fleet while we asked (re-resolved, or a new backend)
            before = member.available(model)
            member.versions[model] = tuple(versions)
            after = member.available(model)
            if before != after and member.polled and not self.channel_mode:
                log.info("endpoint versions", extra={"fields": {
                    "event": "endpoint_versions", "endpoint": member.address, "model": model,
                    "versions": sorted(after)}})
        if answered:
            member.polled = True
            if member.health.probe_succeeded():
                self._log_health(member, "readmitted")
        elif member.health.probe_failed():
            self._log_health(member, "ejected")
            self._resolve_soon()

    async def _describe(self, member: Member, model: str, version: int) -> None:
        """Fetch and cache input spec and labels of a version the first time an endpoint serves it."""
        key = (model, version)
        if key in self._infos:
            return
        failed = self._unusable.get(key)
        loop = asyncio.get_running_loop()
        if failed is not None and loop.time() - failed[1] < RETRY_UNUSABLE_SECONDS:
            return
        try:
            info = await member.endpoint.describe(model, version)
            self._validate(info)
        except (VersionGone, ModelNotServed, CallFailed):
            return  # it moved on, or is failing: the next round looks again
        except GatewayError as exc:
            self._unusable[key] = (exc.message, loop.time())
            log.warning("model version unusable", extra={"fields": {
                "event": "model_version_unusable", "model": model, "version": version, "problem": exc.message}})
            return
        except ValueError as exc:
            problem = f"model {model} version {version}: {exc}"
            self._unusable[key] = (problem, loop.time())
            log.warning("model version unusable", extra={"fields": {
                "event": "model_version_unusable", "model": model, "version": version, "problem": problem}})
            return
        self._unusable.pop(key, None)
        self._infos[key] = info
        spec = info.input
        log.info("model version described", extra={"fields": {
            "event": "model_version", "model": model, "version": version,
            "input": f"{spec.height}x{spec.width}x{spec.channels}", "labels": len(info.labels)}})

    def _needs_fast_poll(self) -> bool:
        """While an endpoint is out or the default model (the first) is not served: look often."""
        return (not self.members or any(not m.health.healthy or not m.polled for m in self.members.values())
                or not self.served(self._models[0]))

    async def _resolve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            try:
                addresses = await resolve(self.target, loop.getaddrinfo)
            except OSError as exc:
                if not failing:
                    log.warning("cannot resolve %s: %s (keeping %d endpoints)", self.target.host, exc, len(self.members))
                failing = True
            else:
                failing = False
                if addresses and set(addresses) != set(self.members):
                    self._set_members(addresses)
                    self._polling = None
                    try:
                        await self.poll()
                    except Exception:
                        log.exception("model server status round failed")
            self._resolve_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.backend_resolve_seconds):
                    await self._resolve_now.wait()
            await asyncio.sleep(MIN_RESOLVE_SECONDS if self._resolve_now.is_set() else 0)

    def _resolve_soon(self) -> None:
        if self._resolving:
            self._resolve_now.set()

    @property
    def _resolving(self) -> bool:
        """A dns target the gateway resolves itself (in channel mode, grpc's resolver does)."""
        return self.target.resolves and not self.channel_mode

    def _start_resolver(self) -> None:
        if self._resolving and (self._resolver is None or self._resolver.done()):
            self._resolver = asyncio.create_task(self._resolve_forever(), name="fleet-resolver")

    async def _stop_resolver(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
            await asyncio.gather(self._resolver, return_exceptions=True)
            self._resolver = None

    def _log_health(self, member: Member, change: str) -> None:
        level = logging.INFO if change == "readmitted" else logging.WARNING
        log.log(level, "model server endpoint %s", change, extra={"fields": {
            "event": "endpoint", "endpoint": member.address, "change": change, "reason": member.health.reason}})
        self._changed()

    def _changed(self) -> None:
        self._served.clear()
        healthy = self.healthy_count
        self._metrics.endpoints.labels("healthy").set(healthy)
        self._metrics.endpoints.labels("ejected").set(len(self.members) - healthy)
        self._metrics.circuit_state.set(0 if healthy else 1)
        served = {(m.address, model, v) for m in self.members.values() if m.health.healthy
                  for model in self._models for v in m.available(model) if (model, v) in self._infos}
        self._metrics.set_endpoint_versions(served)
        for listener in self._listeners:
            listener()
