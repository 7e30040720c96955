"""The gateway's data plane, free of any transport: classify images, list models, readiness.

The gRPC servicer and the REST routes are thin adapters over `GatewayCore`; everything that
decides an answer happens here, in explicit stages, each timed:

    route (gateway/registry.py: which model version)  ->  decode (Pillow, bounded pool, for that
    version's input)  ->  queue_wait + predict (micro-batched Predict to a model server endpoint
    serving that version)  ->  decide (thresholds)  [->  a shadow copy, in the background]

Deadlines are absolute times on the event loop's clock; when one passes, the work for the request
is cancelled (including its place in a batch) and DEADLINE_EXCEEDED is raised.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from dataclasses import dataclass
from typing import Hashable, Sequence

from gateway.backend import VersionGone
from gateway.batcher import MicroBatcher
from gateway.decode import Decoder, is_small, parse_colour
from gateway.callers import CallerLabels
from gateway.errors import (DeadlineExceeded, GatewayError, InternalError, InvalidArgument, Overloaded,
                            TooManyImages)
from gateway.fleet import Fleet
from gateway.metrics import Metrics
from gateway.registry import ModelRegistry
from gateway.routing import VersionRequest
from gateway.settings import Settings
from gateway.shadow import Shadow
from gateway.thresholds import decide
from gateway.types import Classification, ImageRequest, ModelSummary, Readiness, Scores, ServedVersion

log = logging.getLogger(__name__)


class GatewayCore:
    def __init__(self, settings: Settings, fleet: Fleet, registry: ModelRegistry,
                 decoder: Decoder, metrics: Metrics):
        self._settings = settings
        self._fleet = fleet
        self._registry = registry
        self._decoder = decoder
        self._metrics = metrics
        self._batchers = {name: self._make_batcher(name) for name in registry.names}
        self._shadow = Shadow(settings, fleet, decoder, metrics, registry.names)
        self._outstanding = {name: collections.Counter() for name in registry.names}  # version -> images
        self._caller_labels = CallerLabels()
        fleet.add_listener(self._resize)

    def _make_batcher(self, name: str) -> MicroBatcher:
        s = self._settings
        return MicroBatcher(
            name, functools.partial(self._predict, name), max_batch_size=s.max_batch_size,
            max_wait=s.max_wait_ms / 1000.0, max_queue=s.max_queue, max_concurrent=s.max_concurrent_batches,
            policy=lambda caller: self._settings.caller_policy(caller),
            on_queue_depth=self._metrics.queue_depth.labels(name).set,
            on_caller_depth=lambda caller, depth: self._metrics.caller_queue_depth.labels(
                name, self._caller_labels(caller)).set(depth),
            on_batch=self._metrics.batch_size.labels(name).observe,
        )

    def _resize(self) -> None:
        """Batches in flight per model: max_concurrent_batches for each endpoint serving it."""
        for name, batcher in self._batchers.items():
            batcher.set_capacity(self._settings.max_concurrent_batches * self._fleet.endpoints_serving(name))

    # -- what the transports call -----------------------------------------------------------

    def readiness(self) -> Readiness:
        return Readiness(self._registry.ready, self._registry.draining,
                         {name: self._registry.state(name) for name in self._registry.names})

    def resolve_model(self, model: str) -> str:
        """The model a request means ("" = the default); ModelNotFound for one not fronted here."""
        name = model or self._settings.default_model
        self._registry.entry(name)
        return name

    def deadline(self, timeout: float | None) -> float:
        """Absolute deadline for work starting now: the client's timeout when it gave one, else
        the configured default (`request_timeout_seconds`), whichever is shorter."""
        default = self._settings.request_timeout_seconds
        return asyncio.get_running_loop().time() + (default if timeout is None else min(timeout, default))

    async def classify(self, request: ImageRequest, deadline: float) -> Classification:
        name = self.resolve_model(request.model)
        top_k = self._top_k(request.top_k)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._classify(name, request, top_k, deadline)
        except TimeoutError:
            raise DeadlineExceeded("the deadline passed before the image was classified") from None

    async def attempt(self, request: ImageRequest, deadline: float) -> Classification | GatewayError:
        """classify(), with a failure returned as the outcome instead of raised (for per-item answers)."""
        try:
            return await self.classify(request, deadline)
        except GatewayError as exc:
            return exc
        except Exception:
            log.exception("classifying one image failed")
            return InternalError()

    async def classify_many(self, requests: Sequence[ImageRequest], deadline: float) -> list[Classification | GatewayError]:
        """One outcome per image, in order: its classification, or the error that failed it alone.
        TooManyImages for more than max_images_per_request; DeadlineExceeded when the call's own
        deadline passed before every image was answered."""
        limit = self._settings.max_images_per_request
        if len(requests) > limit:
            raise TooManyImages(f"{len(requests)} images in one request; the limit is {limit}",
                                metadata={"limit": str(limit)})
        outcomes = await asyncio.gather(*(self.attempt(r, deadline) for r in requests))
        if asyncio.get_running_loop().time() >= deadline and any(isinstance(o, DeadlineExceeded) for o in outcomes):
            raise DeadlineExceeded("the deadline passed before every image was classified")
        return outcomes

    async def list_models(self) -> list[ModelSummary]:
        out = []
        for name in self._registry.names:
            info, _ = self._registry.current(name)
            out.append(ModelSummary(name, info.version if info else 0, info.labels if info else (),
                                   self._registry.state(name), info.input if info else None))
        return out

    def fleet(self) -> dict:
        """The model servers and what each serves, with every model's routing and how many Predict
        calls the gateway sends it at once (GET /v1/fleet)."""
        view = self._registry.fleet_view()
        for name, batcher in self._batchers.items():
            if name in view["models"]:
                view["models"][name]["max_batches_in_flight"] = batcher.max_concurrent
        return view

    async def close(self) -> None:
        await self._shadow.close()
        await asyncio.gather(*(b.close() for b in self._batchers.values()))

    def update(self, settings: Settings) -> None:
        """Take the caller settings (weights, priorities, limits) of a reloaded config."""
        self._settings = settings

    # -- the stages --------------------------------------------------------------------------

    def _top_k(self, top_k: int) -> int:
        if top_k < 0:
            raise InvalidArgument(f"top_k must be 0 (the default, {self._settings.default_top_k}) or more, not {top_k}")
        return top_k or self._settings.default_top_k

    async def _classify(self, name: str, request: ImageRequest, top_k: int, deadline: float) -> Classification:
        outstanding = self._outstanding[name]
        plan = await self._registry.plan(name, VersionRequest(request.version, request.version_label, request.route_key),
                                         outstanding.__getitem__)
        info = plan.primary
        settings = self._registry.entry(name).settings
        background = _colour(settings.alpha_background)
        stages: dict[str, float] = {}

        outstanding[info.version] += 1
        try:
            if is_small(request.image):  # decoded with its batch, off the loop (gateway/decode.py)
                payload: bytes | _Undecoded = _Undecoded(request.image, background)
            else:
                started = time.perf_counter()
                payload = await self._decoder.decode(request.image, info.input, background)
                stages["decode"] = time.perf_counter() - started
            caller = request.caller if self._settings.fair_queueing else ""
            result = await self._batchers[name].submit((info.version, plan.route.strict), payload, deadline, caller)
        except Overloaded:
            self._metrics.caller_rejections.labels(name, self._caller_labels(request.caller)).inc()
            raise
        finally:
            outstanding[info.version] -= 1
        self._metrics.caller_queue_wait_of(name, self._caller_labels(request.caller)).observe(result.queue_wait)
        used, scores, pixels, batch_decode = result.value
        if "decode" not in stages:
            stages["decode"] = batch_decode
        stages["queue_wait"], stages["predict"] = result.queue_wait, result.predict - batch_decode

        started = time.perf_counter()
        decision = decide(used.labels, scores.values, settings.thresholds, settings.uncertain_label, top_k,
                          scores.ood_score, scores.ood_threshold)
        stages["decide"] = time.perf_counter() - started

        self._metrics.observe_stages(name, stages)
        self._metrics.decisions_of(name, str(used.version), decision.label, str(decision.confident).lower(),
                                   decision.reason).inc()
        if plan.shadow is not None and plan.shadow.version != used.version:
            self._shadow.offer(plan.shadow, used, request.image, pixels, decision, settings, background)
        return Classification(name, used.version, decision, stages)

    async def _predict(self, name: str, key: Hashable, payloads: list[bytes | _Undecoded],
                       deadline: float) -> list[tuple[ServedVersion, Scores, bytes, float] | GatewayError]:
        """The batcher's send: the batch's small images decoded together (gateway/decode.py), then one
        Predict for every image that decoded, to an endpoint serving the batch's version; an image
        that did not decode answers with its own error. When no endpoint serves the version any more
        (a rollout moved on), default traffic goes once more to the version default traffic uses
        now; a request that named its version does not. Each row: the version used, the scores,
        the image's pixels (for a shadow copy) and the batch's decode time."""
        version, strict = key
        info = self._fleet.info(name, version)
        rows: list = list(payloads)
        undecoded = [i for i, p in enumerate(payloads) if isinstance(p, _Undecoded)]
        decode_seconds = 0.0
        if undecoded:
            started = time.perf_counter()
            decoded = await self._decoder.decode_many([(payloads[i].data, info.input, payloads[i].background)
                                                       for i in undecoded])
            decode_seconds = time.perf_counter() - started
            for i, outcome in zip(undecoded, decoded):
                rows[i] = outcome
        ready = [i for i, row in enumerate(rows) if isinstance(row, bytes)]
        if not ready:
            return rows
        pixels = b"".join(rows[i] for i in ready)
        try:
            used, scores = await self._fleet.predict(info, pixels, len(ready), deadline)
        except VersionGone:
            if strict:
                raise
            fresh = self._registry.replacement(info)
            if fresh is None:  # what replaced it may not have been seen yet: look now
                await self._fleet.fresh(0.0)
                fresh = self._registry.replacement(info)
            if fresh is None:
                raise
            used, scores = await self._fleet.predict(fresh, pixels, len(ready), deadline)
        for i, row in zip(ready, scores):
            rows[i] = (used, row, rows[i], decode_seconds)
        return rows


@dataclass(frozen=True)
class _Undecoded:
    """A small image that waits in the batcher as it arrived, to be decoded with its batch."""

    data: bytes
    background: tuple[int, int, int]


@functools.lru_cache(maxsize=64)
def _colour(name: str) -> tuple[int, int, int]:
    return parse_colour(name)
