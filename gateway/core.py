"""The gateway's data plane, free of any transport: classify images, list models, readiness.

The gRPC servicer and the REST routes are thin adapters over `ClassifierService`; everything that
decides an answer happens here, in explicit stages, each timed:

    decode (Pillow, bounded pool)  ->  queue_wait + predict (micro-batched Predict)  ->  decide (thresholds)

Deadlines are absolute times on the event loop's clock; when one passes, the work for the request
is cancelled (including its place in a batch) and DEADLINE_EXCEEDED is raised.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Sequence

from gateway.backend import Backend, ModelInfo, VersionGone
from gateway.batcher import MicroBatcher
from gateway.decode import Decoder, parse_colour
from gateway.errors import DeadlineExceeded, GatewayError, InvalidArgument, TooLarge
from gateway.metrics import Metrics
from gateway.registry import ModelRegistry
from gateway.settings import Settings
from gateway.thresholds import Decision, decide


@dataclass(frozen=True)
class ClassifyInput:
    model: str        # "" means the default model
    image: bytes
    top_k: int = 0    # 0 means the configured default


@dataclass(frozen=True)
class Classification:
    model: str
    version: int
    decision: Decision
    stages: dict[str, float] = field(default_factory=dict, compare=False)  # seconds per stage


@dataclass(frozen=True)
class Readiness:
    ready: bool                 # the default model is AVAILABLE and the gateway is not draining
    draining: bool
    models: dict[str, str]      # model -> state


@dataclass(frozen=True)
class ModelStatus:
    name: str
    version: int
    labels: tuple[str, ...]
    state: str


class ClassifierService:
    def __init__(self, settings: Settings, backend: Backend, registry: ModelRegistry,
                 decoder: Decoder, metrics: Metrics):
        self._settings = settings
        self._backend = backend
        self._registry = registry
        self._decoder = decoder
        self._metrics = metrics
        self._batchers = {name: self._make_batcher(name) for name in registry.names}
        self._backgrounds = {name: parse_colour(settings.model_settings(name).alpha_background)
                             for name in registry.names}

    def _make_batcher(self, name: str) -> MicroBatcher:
        s = self._settings
        return MicroBatcher(
            name, self._predict, max_batch_size=s.max_batch_size, max_wait=s.max_wait_ms / 1000.0,
            max_queue=s.max_queue, max_concurrent=s.max_concurrent_batches,
            on_queue_depth=self._metrics.queue_depth.labels(name).set,
            on_batch=self._metrics.batch_size.labels(name).observe,
        )

    # -- what the transports call -----------------------------------------------------------

    def readiness(self) -> Readiness:
        return Readiness(self._registry.ready, self._registry.draining,
                         {e.name: e.state for e in self._registry.entries()})

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

    async def classify(self, request: ClassifyInput, deadline: float) -> Classification:
        name = self.resolve_model(request.model)
        top_k = self._top_k(request.top_k)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._classify(name, request.image, top_k, deadline)
        except TimeoutError:
            raise DeadlineExceeded("the deadline passed before the image was classified") from None

    async def classify_many(self, requests: Sequence[ClassifyInput], deadline: float) -> list[Classification]:
        """All or nothing: the first failure cancels the rest and names its index."""
        if len(requests) > self._settings.max_images_per_request:
            raise TooLarge(f"{len(requests)} images in one request; the limit is "
                           f"{self._settings.max_images_per_request}")
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._indexed(i, r, deadline)) for i, r in enumerate(requests)]
        except ExceptionGroup as errors:
            raise _first(errors) from None
        return [task.result() for task in tasks]

    async def list_models(self) -> list[ModelStatus]:
        out = []
        for entry in self._registry.entries():
            info = entry.info
            out.append(ModelStatus(entry.name, info.version if info else 0,
                                   info.labels if info else (), entry.state))
        return out

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self._batchers.values()))

    # -- the stages --------------------------------------------------------------------------

    async def _indexed(self, index: int, request: ClassifyInput, deadline: float) -> Classification:
        try:
            return await self.classify(request, deadline)
        except GatewayError as exc:
            raise GatewayError(f"requests[{index}]: {exc.message}", exc.kind) from None

    def _top_k(self, top_k: int) -> int:
        if top_k < 0:
            raise InvalidArgument(f"top_k must be 0 (the default, {self._settings.default_top_k}) or more, not {top_k}")
        return top_k or self._settings.default_top_k

    async def _classify(self, name: str, image: bytes, top_k: int, deadline: float) -> Classification:
        info = await self._registry.info(name)
        entry = self._registry.entry(name)
        stages: dict[str, float] = {}

        started = time.perf_counter()
        pixels = await self._decoder.decode(image, info.input, self._backgrounds[name])
        stages["decode"] = time.perf_counter() - started

        result = await self._batchers[name].submit(info, pixels, deadline)
        used, scores = result.value
        stages["queue_wait"], stages["predict"] = result.queue_wait, result.predict

        started = time.perf_counter()
        decision = decide(used.labels, scores, entry.settings.thresholds, entry.settings.uncertain_label, top_k)
        stages["decide"] = time.perf_counter() - started

        self._metrics.observe_stages(name, stages)
        self._metrics.decisions.labels(name, decision.label, str(decision.confident).lower()).inc()
        return Classification(name, used.version, decision, stages)

    async def _predict(self, info: ModelInfo, payloads: list[bytes], deadline: float) -> list[tuple[ModelInfo, list[float]]]:
        """The batcher's send: one Predict for the batch; on a version swap, once more on the new one."""
        pixels = b"".join(payloads)
        try:
            rows = await self._backend.predict(info, pixels, len(payloads), deadline)
        except VersionGone:
            fresh = (await self._registry.refresh(info.name)).info
            if fresh is None or fresh.version == info.version or (fresh.input_name, fresh.input) != (info.input_name, info.input):
                raise
            info = fresh
            rows = await self._backend.predict(info, pixels, len(payloads), deadline)
        return [(info, row) for row in rows]


def _first(errors: BaseExceptionGroup) -> BaseException:
    """The error to report from a failed group: the first GatewayError, else the first error."""
    leaves: list[BaseException] = []

    def walk(group: BaseExceptionGroup) -> None:
        for exc in group.exceptions:
            walk(exc) if isinstance(exc, BaseExceptionGroup) else leaves.append(exc)

    walk(errors)
    return next((e for e in leaves if isinstance(e, GatewayError)), leaves[0])
