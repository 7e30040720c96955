"""Shadow traffic: a copy of a share of default traffic sent to a candidate version, never in the way.

`models.<name>.shadow: {version or label, percent}` picks the share (gateway/routing.py). For each
request in it, after the caller's answer is decided, `Shadow.offer()` starts a task that sends the
same pixels (decoded again when the candidate's input differs) to the candidate through a batcher
of its own, decides the candidate's answer with the same rules, and counts how the two compare:
same top-1 label, same decision (label and confident, "not sure" included), and how far the
candidate's score for the answer's top-1 label is from the answer's. The caller never waits for
any of it; at most `shadow_max_inflight` copies per model are queued or in flight, and copies
beyond that are skipped and counted, so a slow or failing candidate changes neither the answer nor
its latency. `python -m gateway.canary_report` turns the counts into PROMOTE or HOLD.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from gateway.batcher import MicroBatcher
from gateway.decode import Decoder
from gateway.errors import GatewayError, Overloaded, Unavailable
from gateway.fleet import Fleet
from gateway.metrics import Metrics
from gateway.settings import ModelSettings, Settings
from gateway.thresholds import decide
from gateway.types import Decision, Scores, ServedVersion

log = logging.getLogger(__name__)

MAX_CONCURRENT_SHADOW_BATCHES = 2  # per model: the candidate gets a trickle, not a second fleet's load


class Shadow:
    def __init__(self, settings: Settings, fleet: Fleet, decoder: Decoder, metrics: Metrics, models: list[str]):
        self._fleet = fleet
        self._decoder = decoder
        self._metrics = metrics
        self._timeout = settings.backend_timeout_seconds
        self._bound = settings.shadow_max_inflight
        self._tasks: dict[str, set[asyncio.Task]] = {name: set() for name in models}
        self._batchers = {name: MicroBatcher(
            f"{name} (shadow)", functools.partial(self._send, name), max_batch_size=settings.max_batch_size,
            max_wait=settings.max_wait_ms / 1000.0, max_queue=settings.shadow_max_inflight,
            max_concurrent=MAX_CONCURRENT_SHADOW_BATCHES) for name in models}

    def offer(self, candidate: ServedVersion, primary: ServedVersion, image: bytes, pixels: bytes,
              answer: Decision, settings: ModelSettings, background: tuple[int, int, int]) -> None:
        """Compare `answer` (what the caller got from `primary`) with `candidate`'s, in the background."""
        tasks = self._tasks[primary.name]
        if len(tasks) >= self._bound:
            self._metrics.shadow_skipped.labels(primary.name, "busy").inc()
            return
        task = asyncio.ensure_future(self._compare(candidate, primary, image, pixels, answer, settings, background))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def close(self) -> None:
        tasks = [t for group in self._tasks.values() for t in group]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(b.close() for b in self._batchers.values()))

    async def _compare(self, candidate: ServedVersion, primary: ServedVersion, image: bytes, pixels: bytes,
                       answer: Decision, settings: ModelSettings, background: tuple[int, int, int]) -> None:
        model = primary.name
        try:
            if not candidate.compatible(primary):
                pixels = await self._decoder.decode(image, candidate.input, background)
            deadline = asyncio.get_running_loop().time() + self._timeout
            scores = (await self._batchers[model].submit(candidate.version, pixels, deadline)).value
        except Overloaded:
            self._metrics.shadow_skipped.labels(model, "busy").inc()
            return
        except Unavailable:
            self._metrics.shadow_skipped.labels(model, "unavailable").inc()
            return
        except GatewayError as exc:
            log.debug("shadow call to model %s version %s failed: %s", model, candidate.version, exc.message)
            self._metrics.shadow_skipped.labels(model, "failed").inc()
            return
        try:
            shadow = decide(candidate.labels, scores.values, settings.thresholds, settings.uncertain_label,
                            len(candidate.labels), scores.ood_score, scores.ood_threshold)
        except ValueError:
            self._metrics.shadow_skipped.labels(model, "input").inc()
            return
        top = answer.predictions[0] if answer.predictions else None
        same_top1 = top is not None and shadow.predictions[0].label == top.label
        same_decision = (shadow.label, shadow.confident) == (answer.label, answer.confident)
        version = str(candidate.version)
        self._metrics.shadow_comparisons.labels(model, version, _same(same_top1), _same(same_decision)).inc()
        if top is not None:
            theirs = next((p.score for p in shadow.predictions if p.label == top.label), 0.0)
            self._metrics.shadow_score_delta.labels(model, version).observe(abs(theirs - top.score))

    async def _send(self, model: str, version: int, payloads: list[bytes], deadline: float) -> list[Scores]:
        info = self._fleet.info(model, version)
        _, rows = await self._fleet.predict(info, b"".join(payloads), len(payloads), deadline)
        return rows


def _same(flag: bool) -> str:
    return "same" if flag else "different"
