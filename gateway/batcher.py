"""Micro-batching with fair queueing: concurrent requests for one model coalesced into one backend call.

Callers `submit()` one item, saying who they are (`caller`: an API key's name, a client id, an
address), and await their own row of the answer. A worker task flushes a batch when
`max_batch_size` items wait or the oldest has waited `max_wait` seconds, whichever comes first, and
sends it with `send(key, payloads, deadline)`, which answers one row per item (a GatewayError
as a row fails that item alone). When no batch is in flight as the worker starts a batch, what
waits is sent at once, and an item that finds nothing waiting and nothing in flight is sent by its caller's own task
straight away: an idle model answers a lone request without the wait or a hand-off. It takes along the items of
its key submitted in the same turn of the event loop (the other images of one batch call): they share its batch,
which then goes in a task of its own, so that one caller giving up does not stop the others' call. At most `max_concurrent` batches are
in flight (the caller of `set_capacity` may change that); while they all are, new items wait and
form the next, bigger batch - batching adapts to load.

Fairness: every caller has a queue of its own, and batches are filled from them by deficit round
robin - each turn a caller may add up to its `weight` items (`policy(caller)` says) - so a caller's wait depends on its own
backlog, not on everyone's, while batches still fill from all callers. Callers of the `bulk` class
only fill what room `interactive` callers leave. A caller with nothing queued or in flight does
not wait for a batch slot when all are taken: its item goes at once as a batch of its own (up to
`max_concurrent` such extra batches; not for bulk callers; `express=False` turns it off), so a
light caller's latency is one small call even while a heavy one keeps every slot busy.

Bounds:
* at most `max_queue` items wait in all, and at most the limit `policy` gives a caller (0: no limit
  of its own). When a bound is hit, the item turned away is the newest of the caller with the most waiting
  - the newcomer itself when that is its own caller - so overload is refused to whoever causes it,
  never to a quiet caller; the refusal is Overloaded with a retry hint;
* callers that gave up (cancelled) are dropped before their batch is sent, and a call whose every
  caller gave up is cancelled;
* every item has its own deadline: one past it fails with DEADLINE_EXCEEDED instead of being sent,
  and a batch's backend call gets the latest deadline among its items, so an impatient caller never
  fails the others (its own wait ends at its deadline, in its own task);
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

from gateway.errors import DeadlineExceeded, GatewayError, InternalError, Overloaded, ShuttingDown

log = logging.getLogger(__name__)

R = TypeVar("R")
SendBatch = Callable[[Hashable, list[Any], float], Awaitable[list[R]]]
CallerPolicy = Callable[[str], tuple[float, bool, int]]   # caller -> (weight, bulk?, queue limit or 0)
MIN_RETRY_AFTER, MAX_RETRY_AFTER = 0.05, 5.0


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
    caller: "_Caller" = field(repr=False)
    future: asyncio.Future = field(repr=False)
    context: contextvars.Context = field(repr=False, default_factory=contextvars.copy_context)
    waiting: bool = True   # counted in the queue (not yet taken, dropped or turned away)


@dataclass
class _Caller:
    name: str
    weight: float
    bulk: bool
    limit: int             # most items it may have waiting (0: no limit of its own)
    queues: dict = field(default_factory=dict)   # key -> deque of items, oldest first
    waiting: int = 0       # live items queued (cancelled ones leave the count at once, the deque later)
    deficit: float = 0.0

    def items(self):
        for queue in self.queues.values():
            yield from queue

    def oldest_key(self) -> Hashable:
        return min(self.queues, key=lambda k: self.queues[k][0].enqueued)


class MicroBatcher(Generic[R]):
    def __init__(self, name: str, send: SendBatch, *, max_batch_size: int, max_wait: float,
                 max_queue: int, max_concurrent: int,
                 policy: CallerPolicy = lambda caller: (1.0, False, 0), express: bool = True,
                 on_queue_depth: Callable[[int], None] = lambda depth: None,
                 on_caller_depth: Callable[[str, int], None] = lambda caller, depth: None,
                 on_batch: Callable[[int], None] = lambda size: None):
        self.name = name
        self._send = send
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.max_concurrent = max_concurrent
        self.express = express
        self._policy = policy
        self._on_queue_depth = on_queue_depth
        self._on_caller_depth = on_caller_depth
        self._on_batch = on_batch
        self._callers: collections.OrderedDict[str, _Caller] = collections.OrderedDict()  # turn order
        self._waiting = 0                  # live items in all queues
        self._arrived = asyncio.Event()    # something waits
        self._full = asyncio.Event()       # a whole batch is waiting
        self._slot_free = asyncio.Event()
        self._inflight = 0                 # batches being sent
        self._busy: collections.Counter[str] = collections.Counter()  # caller -> its items in batches being sent
        self._seconds_per_item = 0.001     # recent backend time per item, for retry hints
        self._worker: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()
        self._alone: set[asyncio.Task] = set()   # callers sending their item themselves (idle model)
        self._closed = False

    def set_capacity(self, max_concurrent: int) -> None:
        """Change how many batches may be in flight at once (the fleet grew or shrank)."""
        self.max_concurrent = max(1, max_concurrent)
        self._slot_free.set()

    def waiting(self, caller: str) -> int:
        state = self._callers.get(caller)
        return state.waiting if state else 0

    async def submit(self, key: Hashable, payload: Any, deadline: float, caller: str = "") -> BatchResult[R]:
        """Queue one item for `caller` and wait for its row (cancelling the wait drops it from its
        batch). Overloaded when a bound turns it away; ShuttingDown after close()."""
        if self._closed:
            raise ShuttingDown("the gateway is shutting down")
        # A caller's state is kept only while it has items queued (an idle caller keeps none).
        state = self._callers.get(caller) or _Caller(caller, *self._policy(caller))
        if state.limit and state.waiting >= state.limit:
            raise self._overloaded(state, f"caller {caller or 'anonymous'} has {state.waiting} requests queued "
                                          f"for model {self.name} (its limit)")
        loop = asyncio.get_running_loop()
        idle = not self._waiting and not self._inflight
        # A caller with nothing queued or in flight, while every batch slot is taken, need not wait
        # for one: a batch of its own goes at once (at most max_concurrent such extra batches).
        express = (self.express and caller and not state.bulk and not state.waiting and not self._busy[caller]
                   and self.max_concurrent <= self._inflight < 2 * self.max_concurrent)
        if idle or express:
            # Sent from the caller's own task: no hand-off to the worker and back, which is most of
            # what batching costs a lone request.
            item = _Item(key, payload, deadline, loop.time(), state, loop.create_future(), waiting=False)
            if idle and self.max_batch_size > 1:
                return await self._send_idle(item, loop)
            return await self._send_alone(item, loop)
        if self._waiting >= self.max_queue:
            self._make_room(state)
        self._callers[caller] = state
        if self._worker is None:
            # A fresh context: the long-lived worker must not keep the first caller's (trace, ids).
            self._worker = loop.create_task(self._run(), name=f"batcher-{self.name}", context=contextvars.Context())
        item = _Item(key, payload, deadline, loop.time(), state, loop.create_future())
        item.future.add_done_callback(lambda _: self._leave(item))
        state.queues.setdefault(key, collections.deque()).append(item)
        state.waiting += 1
        self._waiting += 1
        self._on_caller_depth(caller, state.waiting)
        self._changed()
        return await item.future

    async def _send_idle(self, item: _Item, loop: asyncio.AbstractEventLoop) -> BatchResult[R]:
        """The first item on an idle model: it holds a slot for one turn of the loop, so the items
        submitted in that turn (the other images of one batch call) queue behind it, then goes with
        those of its key - alone from its caller's task when none came."""
        name = item.caller.name
        self._inflight += 1   # the slot is this item's: what is submitted meanwhile queues,
        self._busy[name] += 1  # its caller's own next items too (they are not light: no express lane)
        try:
            await asyncio.sleep(0)
            if self._closed:
                raise ShuttingDown("the gateway is shutting down")
        except BaseException:
            self._inflight -= 1
            self._slot_free.set()
            raise
        finally:
            self._busy[name] -= 1
            if not self._busy[name]:
                del self._busy[name]
        batch = self._take(loop.time(), [item])
        if len(batch) == 1:
            self._inflight -= 1  # _send_alone takes it again, with nothing in between
            return await self._send_alone(item, loop)
        self._start(batch, loop)  # several callers now: a task of its own, as the worker's batches
        return await item.future

    async def _send_alone(self, item: _Item, loop: asyncio.AbstractEventLoop) -> BatchResult[R]:
        """Send one item as its own batch from the caller's task."""
        task = asyncio.current_task()
        self._inflight += 1
        self._alone.add(task)
        try:
            await self._send_batch([item], loop, alone=True)
        except asyncio.CancelledError:
            item.future.exception()  # retrieved: its caller is the one being cancelled
            if self._closed:  # close() stopped the call, not the caller: it gets what the others get
                task.uncancel()
                raise ShuttingDown("the gateway is shutting down") from None
            raise
        finally:
            self._alone.discard(task)
        return item.future.result()

    async def close(self) -> None:
        """Stop the worker; queued and in-flight callers get ShuttingDown."""
        self._closed = True
        for task in self._alone:
            task.cancel()
        tasks = [t for t in [self._worker, *self._sending] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._callers.values():
            for item in state.items():
                if not item.future.done():
                    item.future.set_exception(ShuttingDown("the gateway is shutting down"))
        self._callers.clear()
        self._changed()

    # -- bounds --------------------------------------------------------------------------------

    def _make_room(self, newcomer: _Caller) -> None:
        """The queue is full: turn away the newest item of the caller with the most waiting."""
        heaviest = max(self._callers.values(), key=lambda c: c.waiting)
        if heaviest is newcomer or heaviest.waiting <= newcomer.waiting + 1:
            raise self._overloaded(newcomer, f"model {self.name} has {self.max_queue} requests queued")
        for item in sorted(heaviest.items(), key=lambda i: i.enqueued, reverse=True):
            if item.waiting:
                item.future.set_exception(self._overloaded(
                    heaviest, f"model {self.name} has {self.max_queue} requests queued, most of them yours"))
                self._leave(item)
                return

    def _overloaded(self, caller: _Caller, why: str) -> Overloaded:
        slots = max(1, self.max_concurrent) * self.max_batch_size
        wait = min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, caller.waiting * self._seconds_per_item * self.max_batch_size / slots))
        return Overloaded(f"{why}; retry in {wait:.2f} s", retry_after=wait, metadata={"model": self.name})

    def _leave(self, item: _Item) -> None:
        """An item stops counting as waiting (taken into a batch, answered, dropped, turned away)."""
        if item.waiting:
            item.waiting = False
            item.caller.waiting -= 1
            self._waiting -= 1
            self._on_caller_depth(item.caller.name, item.caller.waiting)
            self._changed()

    def _changed(self) -> None:
        depth = self._waiting
        self._on_queue_depth(depth)
        if depth:
            self._arrived.set()
        else:
            self._arrived.clear()
        if depth >= self.max_batch_size:
            self._full.set()
        else:
            self._full.clear()

    # -- the worker ------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._inflight >= self.max_concurrent:
                self._slot_free.clear()
                await self._slot_free.wait()
            batch = await self._collect(loop)
            self._inflight += 1
            self._start(batch, loop)

    def _start(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        """Send `batch` (its slot already counted in _inflight) in a task of its own. The backend call
        runs in its oldest caller's context, so a trace started by that request continues into the
        Predict that answers it."""
        oldest = min(batch, key=lambda item: item.enqueued)
        task = loop.create_task(self._send_batch(batch, loop), context=oldest.context.copy())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        """Wait for a full batch or for the oldest item's max_wait (not at all when no batch is in
        flight), then take one batch."""
        while True:
            await self._arrived.wait()
            oldest = min((q[0].enqueued for c in self._callers.values() for q in c.queues.values()),
                         default=loop.time())
            wait_left = oldest + self.max_wait - loop.time()
            if wait_left > 0 and self._inflight and not self._full.is_set():
                try:
                    async with asyncio.timeout(wait_left):
                        await self._full.wait()
                except TimeoutError:
                    pass
            batch = self._take(loop.time())
            if batch:
                return batch
            await asyncio.sleep(0)  # only gone or expired items were left: let their callers' callbacks run

    def _take(self, now: float, first: list[_Item] | None = None) -> list[_Item]:
        """Up to max_batch_size live items sharing one key: interactive callers first, each turn a
        caller adds up to its weight (deficit round robin); then bulk callers the same way. `first`:
        an item already chosen, which sets the key."""
        batch: list[_Item] = list(first or ())
        key: list[Hashable] = [batch[0].key] if batch else []
        for bulk in (False, True):
            callers = [c for c in self._callers.values() if c.bulk is bulk]
            while len(batch) < self.max_batch_size:
                progress = False
                for caller in callers:
                    if len(batch) >= self.max_batch_size:
                        break
                    if self._serve(caller, batch, key, now):
                        progress = True
                if not progress:
                    break
        for caller in list(self._callers.values()):
            if not caller.queues:
                del self._callers[caller.name]   # an idle caller keeps no state (nor a deficit)
        return batch

    def _serve(self, caller: _Caller, batch: list[_Item], key: list[Hashable], now: float) -> bool:
        """One turn of `caller`: True when it added an item (of the batch's key)."""
        for k in list(caller.queues):
            self._drop_dead(caller, k, now)
        if not caller.queues:
            caller.deficit = 0.0
            return False
        if not key:
            key.append(caller.oldest_key())
        queue = caller.queues.get(key[0])
        if queue is None:
            return False   # nothing for this version: it waits for a batch of its own
        caller.deficit += caller.weight
        added = False
        while queue and caller.deficit >= 1.0 and len(batch) < self.max_batch_size:
            item = queue.popleft()
            self._leave(item)
            batch.append(item)
            caller.deficit -= 1.0
            added = True
            self._drop_dead(caller, key[0], now)
        if added:
            self._callers.move_to_end(caller.name)   # the next batch starts with the next caller
        if not caller.queues:
            caller.deficit = 0.0
        return added

    def _drop_dead(self, caller: _Caller, key: Hashable, now: float) -> None:
        """Pop the leading items of one of the caller's queues that need no answer: gone, or past
        their deadline; an emptied queue goes."""
        queue = caller.queues.get(key)
        while queue:
            item = queue[0]
            if item.future.done():
                queue.popleft()
            elif item.deadline <= now:
                queue.popleft()
                item.future.set_exception(DeadlineExceeded("the deadline passed while waiting for a batch"))
            else:
                return
            self._leave(item)
        caller.queues.pop(key, None)

    async def _send_batch(self, batch: list[_Item], loop: asyncio.AbstractEventLoop, alone: bool = False) -> None:
        """Send one batch and settle its callers' futures. `alone`: running in the task of the
        batch's only caller, whose own cancellation stops the call."""
        for item in batch:
            self._busy[item.caller.name] += 1
        try:
            await self._send_and_settle(batch, loop, alone)
        finally:
            for item in batch:
                self._busy[item.caller.name] -= 1
                if not self._busy[item.caller.name]:
                    del self._busy[item.caller.name]

    async def _send_and_settle(self, batch: list[_Item], loop: asyncio.AbstractEventLoop, alone: bool) -> None:
        started = loop.time()
        answered = False
        task = asyncio.current_task()

        def caller_gone(_: asyncio.Future) -> None:
            if not answered and task is not None and all(i.future.done() for i in batch):
                task.cancel()  # nobody waits for this call any more

        if not alone:
            for item in batch:
                item.future.add_done_callback(caller_gone)
        try:
            self._on_batch(len(batch))
            deadline = max(item.deadline for item in batch)
            rows = await self._send(batch[0].key, [item.payload for item in batch], deadline)
            if len(rows) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} got {len(rows)} rows back")
        except asyncio.CancelledError:
            self._fail(batch, ShuttingDown("the gateway is shutting down"))
            raise
        except GatewayError as exc:
            self._fail(batch, exc)
        except Exception:
            log.exception("batch of %d for model %s failed", len(batch), self.name)
            self._fail(batch, InternalError())
        else:
            answered = True
            predict = loop.time() - started
            self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * predict / len(batch)
            for item, row in zip(batch, rows):
                if item.future.done():
                    continue
                if isinstance(row, GatewayError):  # that item alone failed (an image that did not decode)
                    item.future.set_exception(row)
                else:
                    item.future.set_result(BatchResult(row, started - item.enqueued, predict, len(batch)))
        finally:
            self._inflight -= 1
            self._slot_free.set()

    @staticmethod
    def _fail(batch: list[_Item], exc: GatewayError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)
