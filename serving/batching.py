"""Server-side batching (`--enable_batching`): concurrent requests for the same version and
signature are concatenated along dimension 0, run once, and the outputs split back.

Semantics of TF Serving's shared batch scheduler with BatchingParameters:
* a batch runs when it holds `max_batch_size` rows, or when its first request has waited
  `batch_timeout_micros`, and one of `num_batch_threads` is free (a batch waiting for a thread
  keeps filling up);
* at most `max_enqueued_batches` batches wait per queue; a request that needs one more is
  refused with UNAVAILABLE ("The batch scheduling queue ... is full") instead of queueing without
  bound;
* a request larger than `max_batch_size` is split across batches
  (`enable_large_batch_splitting`, on by default) or refused with INVALID_ARGUMENT;
* with `allowed_batch_sizes`, a batch is padded (repeating its first row) up to the next allowed
  size, and the padding is dropped from the outputs.
Requests whose inputs differ beyond dimension 0 never share a batch: each shape has its queue.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping

import numpy as np

from serving.configs import BatchingSettings
from serving.errors import internal, invalid_argument, unavailable
from serving.metrics import ServerMetrics

log = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]
Runner = Callable[[Arrays], dict[str, np.ndarray]]


@dataclass(eq=False)
class _Task:
    inputs: Arrays
    size: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    opened: float = field(default_factory=time.monotonic)

    def add(self, task: _Task) -> None:
        self.tasks.append(task)
        self.size += task.size


class _Queue:
    """The batches of one (version, signature, input shapes) key, and the task that schedules them."""

    def __init__(self, batcher: "Batcher", runner: Runner, model_name: str):
        self._batcher = batcher
        self._runner = runner
        self._model_name = model_name
        self._batches: collections.deque[_Batch] = collections.deque()
        self._changed = asyncio.Event()
        self._scheduler = asyncio.create_task(self._schedule(), name=f"batch-queue-{model_name}")

    def add(self, task: _Task) -> None:
        settings = self._batcher.settings
        if self._batches and self._batches[-1].size + task.size <= settings.max_batch_size:
            self._batches[-1].add(task)
        elif len(self._batches) >= settings.max_enqueued_batches:
            raise unavailable("The batch scheduling queue to which this task was submitted is full")
        else:
            batch = _Batch()
            batch.add(task)
            self._batches.append(batch)
        self._batcher.metrics.batch_queue_tasks.labels(self._model_name).inc()
        self._changed.set()

    def close(self) -> None:
        self._scheduler.cancel()

    async def _schedule(self) -> None:
        settings = self._batcher.settings
        timeout = settings.batch_timeout_micros / 1e6
        while True:
            if not self._batches:
                self._changed.clear()
                await self._changed.wait()
                continue
            head = self._batches[0]
            while head.size < settings.max_batch_size:
                left = head.opened + timeout - time.monotonic()
                if left <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    break
            await self._batcher.threads.acquire()
            self._batches.popleft()
            asyncio.create_task(self._run(head))

    async def _run(self, batch: _Batch) -> None:
        metrics, settings = self._batcher.metrics, self._batcher.settings
        pool = settings.thread_pool_name
        try:
            metrics.batch_queue_tasks.labels(self._model_name).dec(len(batch.tasks))
            started = time.perf_counter()
            for task in batch.tasks:
                metrics.queuing_latency.labels(pool).observe((started - task.enqueued) * 1e6)
            inputs, padded_size = _concatenate(batch, settings.allowed_batch_sizes)
            metrics.processed_batch_size.labels(pool).observe(padded_size)
            if padded_size > batch.size:
                metrics.padding_size.labels(str(padded_size)).observe(padded_size - batch.size)
            outputs = await asyncio.get_running_loop().run_in_executor(self._batcher.executor, self._runner, inputs)
            offset = 0
            for task in batch.tasks:
                part = {}
                for alias, array in outputs.items():
                    if array.ndim == 0 or array.shape[0] != padded_size:
                        raise internal(f"batched output {alias} has shape {list(array.shape)}, "
                                       f"expected dimension 0 of size {padded_size}")
                    part[alias] = array[offset: offset + task.size]
                offset += task.size
                if not task.future.done():
                    task.future.set_result(part)
        except Exception as exc:  # the batch failed: every request in it gets the error
            for task in batch.tasks:
                if not task.future.done():
                    task.future.set_exception(exc)
        finally:
            self._batcher.threads.release()


def _concatenate(batch: _Batch, allowed_sizes: tuple[int, ...]) -> tuple[dict[str, np.ndarray], int]:
    padded_size = batch.size
    if allowed_sizes:
        padded_size = allowed_sizes[bisect.bisect_left(allowed_sizes, batch.size)]
    inputs = {}
    for alias in batch.tasks[0].inputs:
        parts = [task.inputs[alias] for task in batch.tasks]
        if padded_size > batch.size:
            first_row = parts[0][:1]
            parts.append(np.repeat(first_row, padded_size - batch.size, axis=0))
        inputs[alias] = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return inputs, padded_size


def batch_size(inputs: Arrays) -> int:
    """Rows of a request, with TF Serving's batching errors for inputs that cannot be batched."""
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise invalid_argument("Batching Run() input tensors must have at least one dimension")
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


class Batcher:
    """All batch queues of the server; one shared pool of `num_batch_threads`."""

    def __init__(self, settings: BatchingSettings, executor: Executor, metrics: ServerMetrics):
        self.settings = settings
        self.executor = executor
        self.metrics = metrics
        self.threads = asyncio.Semaphore(settings.num_batch_threads)
        self._queues: dict[Hashable, _Queue] = {}

    async def submit(self, owner: Hashable, model_name: str, signature_name: str, runner: Runner,
                     inputs: Arrays) -> dict[str, np.ndarray]:
        """Run `inputs` as part of a batch; `owner` (the loaded version) scopes the queues."""
        size = batch_size(inputs)
        self.metrics.input_batch_size.labels(self.settings.thread_pool_name).observe(size)
        limit = self.settings.max_batch_size
        if size > limit and not self.settings.enable_large_batch_splitting:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size {limit}")
        key = (owner, signature_name,
               tuple(sorted((alias, array.dtype.str, array.shape[1:]) for alias, array in inputs.items())))
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(self, runner, model_name)
        loop = asyncio.get_running_loop()
        tasks: list[_Task] = []
        try:
            for start in range(0, size, limit):
                chunk = {alias: array[start: start + limit] for alias, array in inputs.items()}
                task = _Task(chunk, min(limit, size - start), loop.create_future())
                queue.add(task)
                tasks.append(task)
        except BaseException:
            for task in tasks:  # chunks already queued still run; nobody waits for their results
                task.future.cancel()
            raise
        if len(tasks) == 1:
            return await tasks[0].future
        parts = await asyncio.gather(*(task.future for task in tasks))
        return {alias: np.concatenate([part[alias] for part in parts]) for alias in parts[0]}

    def drop(self, owner: Hashable) -> None:
        """Forget the queues of an unloaded version (called once its requests are done)."""
        for key in [key for key in self._queues if key[0] is owner]:
            self._queues.pop(key).close()

    def close(self) -> None:
        for queue in self._queues.values():
            queue.close()
        self._queues.clear()
