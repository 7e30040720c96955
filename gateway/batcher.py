"""Micro-batching: concurrent requests for one model coalesced into one backend call.

Callers `submit()` one item and await their own row of the answer. A worker task flushes a batch
when `max_batch_size` items wait or the oldest has waited `max_wait` seconds, whichever comes
first, and sends it with `send(key, payloads, deadline)`. When no batch is in flight, what waits
is sent at once: an idle model answers a lone request without the wait. At most `max_concurrent`
batches are in flight; while they all are, new items wait in the queue and form the next, bigger
batch - batching adapts to load.

Bounds and fairness:
* the queue holds at most `max_queue` items; one more is refused at once (Overloaded), so
  overload shows up as fast errors, not as growing latency for everyone;
* callers that gave up (cancelled) are dropped before their batch is sent, and a call whose every
  caller gave up is cancelled;
* a batch's deadline is the earliest of its callers' deadlines; items already past theirs fail with
  DEADLINE_EXCEEDED instead of being sent;
* a batch holds items of one `key` only (the model version they were prepared for);
* the backend call runs in the context (contextvars: trace, request ids) of the batch's oldest caller.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

from gateway.errors import DeadlineExceeded, GatewayError, InternalError, Overloaded, Unavailable

log = logging.getLogger(__name__)

R = TypeVar("R")
SendBatch = Callable[[Hashable, list[Any], float], Awaitable[list[R]]]


@dataclass(frozen=True)
class BatchResult(Generic[R]):
    """One caller's row, with what its batch cost it."""

    value: R
    queue_wait: float   # seconds from submit to the batch being sent
    predict: float      # seconds the batch's backend call took
    batch_size: int


@dataclass
class _Item:
    key: Hashable
    payload: Any
    deadline: float
    enqueued: float
    future: asyncio.Future = field(repr=False)
    context: contextvars.Context = field(repr=False, default_factory=contextvars.copy_context)


class MicroBatcher(Generic[R]):
    def __init__(self, name: str, send: SendBatch, *, max_batch_size: int, max_wait: float,
                 max_queue: int, max_concurrent: int,
                 on_queue_depth: Callable[[int], None] = lambda depth: None,
                 on_batch: Callable[[int], None] = lambda size: None):
        self.name = name
        self._send = send
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._on_queue_depth = on_queue_depth
        self._on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()    # the queue is not empty
        self._full = asyncio.Event()       # a whole batch is waiting
        self.max_concurrent = max_concurrent
        self._inflight = 0                 # batches being sent
        self._slot_free = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()
        self._closed = False

    def set_capacity(self, max_concurrent: int) -> None:
        """Change how many batches may be in flight at once (the fleet grew or shrank)."""
        self.max_concurrent = max(1, max_concurrent)
        self._slot_free.set()

    async def submit(self, key: Hashable, payload: Any, deadline: float) -> BatchResult[R]:
        """Queue one item and wait for its row (cancelling the wait drops it from its batch)."""
        if self._closed:
            raise Unavailable("the gateway is shutting down")
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"model {self.name} has {self.max_queue} requests queued; retry later")
        loop = asyncio.get_running_loop()
        if self._worker is None:
            # A fresh context: the long-lived worker must not keep the first caller's (trace, ids).
            self._worker = loop.create_task(self._run(), name=f"batcher-{self.name}",
                                            context=contextvars.Context())
        item = _Item(key, payload, deadline, loop.time(), loop.create_future())
        self._queue.append(item)
        self._changed()
        return await item.future

    async def close(self) -> None:
        """Stop the worker; queued and in-flight callers get Unavailable."""
        self._closed = True
        tasks = [t for t in [self._worker, *self._sending] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable("the gateway is shutting down"))
        self._changed()

    def _changed(self) -> None:
        depth = len(self._queue)
        self._on_queue_depth(depth)
        if depth:
            self._arrived.set()
        else:
            self._arrived.clear()
        if depth >= self.max_batch_size:
            self._full.set()
        else:
            self._full.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._inflight >= self.max_concurrent:
                self._slot_free.clear()
                await self._slot_free.wait()
            batch = await self._collect(loop)
            self._inflight += 1
            # The backend call runs in its oldest caller's context, so a trace started by that
            # request continues into the Predict that answers it.
            task = loop.create_task(self._send_batch(batch, loop), context=batch[0].context.copy())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        """Wait for a full batch or for the oldest item's max_wait (not at all when no batch is in
        flight), then take one batch."""
        while True:
            await self._arrived.wait()
            wait_left = self._queue[0].enqueued + self.max_wait - loop.time()
            if wait_left > 0 and self._sending and not self._full.is_set():
                try:
                    async with asyncio.timeout(wait_left):
                        await self._full.wait()
                except TimeoutError:
                    pass
            batch = self._take(loop.time())
            if batch:
                return batch

    def _take(self, now: float) -> list[_Item]:
        """Up to max_batch_size live items sharing the oldest live item's key."""
        batch: list[_Item] = []
        keep: collections.deque[_Item] = collections.deque()
        key = None
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():          # the caller gave up
                continue
            if item.deadline <= now:
                item.future.set_exception(DeadlineExceeded("the deadline passed while waiting for a batch"))
                continue
            if len(batch) < self.max_batch_size and (key is None or item.key == key):
                key = item.key
                batch.append(item)
            else:
                keep.append(item)
        self._queue = keep
        self._changed()
        return batch

    async def _send_batch(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        started = loop.time()
        answered = False
        task = asyncio.current_task()

        def caller_gone(_: asyncio.Future) -> None:
            if not answered and task is not None and all(i.future.done() for i in batch):
                task.cancel()  # nobody waits for this call any more

        for item in batch:
            item.future.add_done_callback(caller_gone)
        try:
            self._on_batch(len(batch))
            deadline = min(item.deadline for item in batch)
            rows = await self._send(batch[0].key, [item.payload for item in batch], deadline)
            if len(rows) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} got {len(rows)} rows back")
        except asyncio.CancelledError:
            self._fail(batch, Unavailable("the gateway is shutting down"))
            raise
        except GatewayError as exc:
            self._fail(batch, exc)
        except Exception:
            log.exception("batch of %d for model %s failed", len(batch), self.name)
            self._fail(batch, InternalError())
        else:
            answered = True
            predict = loop.time() - started
            for item, row in zip(batch, rows):
                if not item.future.done():
                    item.future.set_result(BatchResult(row, started - item.enqueued, predict, len(batch)))
        finally:
            self._inflight -= 1
            self._slot_free.set()

    @staticmethod
    def _fail(batch: list[_Item], exc: GatewayError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)
