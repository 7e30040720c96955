"""The micro-batcher in-process, driven by a trivial send function (its contract, not a mock):
batch forming (an idle model's first item takes along what was submitted with it), max_wait,
errors, cancellation, per-caller deadlines, versions kept apart, and fair queueing - round robin,
weights, priority classes and bounds that refuse whoever floods."""

from __future__ import annotations

import asyncio

import pytest

from gateway.batcher import MicroBatcher
from gateway.errors import (DeadlineExceeded, ErrorKind, GatewayError, InvalidImage, Overloaded, ShuttingDown,
                            Unavailable)

pytestmark = pytest.mark.unit  # in-process, no model, no server: make test-fast


class Model:
    """A send function that records its batches; `gate` (when set) holds every call until opened."""

    def __init__(self, gate: bool = False, fail: Exception | None = None):
        self.batches: list[list] = []
        self.deadlines: list[float] = []
        self.cancelled = 0
        self.gate = asyncio.Event() if gate else None
        self.fail = fail

    async def __call__(self, key, payloads: list, deadline: float) -> list:
        self.batches.append(list(payloads))
        self.deadlines.append(deadline)
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise self.fail
        return [(key, p) for p in payloads]


def batcher(model: Model, **kwargs) -> MicroBatcher:
    """A batcher without the express lane (its own test below), so batch composition is all DRR."""
    options = dict(max_batch_size=4, max_wait=0.05, max_queue=64, max_concurrent=1, express=False)
    options.update(kwargs)
    return MicroBatcher("m", model, **options)


def later(seconds: float = 10.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def settle() -> None:
    """Let every ready task run until nothing changes (no timers involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_a_lone_request_goes_at_once_and_concurrent_ones_share_a_batch():
    async def main():
        model = Model(gate=True)
        b = batcher(model)
        first = asyncio.create_task(b.submit("v1", 0, later()))
        await settle()
        assert model.batches == [[0]], "an idle model must not wait max_wait"
        rest = [asyncio.create_task(b.submit("v1", i, later())) for i in range(1, 5)]
        await settle()
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        assert model.batches == [[0], [1, 2, 3, 4]]
        assert [r.value for r in results] == [("v1", i) for i in range(5)]
        assert [r.batch_size for r in results] == [1, 4, 4, 4, 4]
        await b.close()

    run(main())


def test_items_submitted_together_on_an_idle_model_share_its_first_batch():
    async def main():
        model = Model()
        b = batcher(model, express=True)
        results = await asyncio.gather(*(b.submit("v2" if i == 2 else "v1", i, later(), caller="svc")
                                         for i in range(7)))
        # The first item held the slot for one turn: the other v1 items (a batch call's images) joined
        # it up to max_batch_size (none took the express lane: their caller was busy); the v2 one and
        # the overflow went next, as the worker's batches.
        assert model.batches[0] == [0, 1, 3, 4] and sorted(map(sorted, model.batches[1:])) == [[2], [5, 6]]
        assert [r.value for r in results] == [("v2" if i == 2 else "v1", i) for i in range(7)]
        await b.close()

    run(main())


def test_the_first_caller_giving_up_does_not_stop_the_batch_it_shares():
    async def main():
        model = Model(gate=True)
        b = batcher(model)
        tasks = [asyncio.create_task(b.submit("v1", i, later())) for i in range(3)]
        await settle()
        assert model.batches == [[0, 1, 2]]
        tasks[0].cancel()
        await settle()
        assert model.cancelled == 0
        model.gate.set()
        assert [(await t).value for t in tasks[1:]] == [("v1", 1), ("v1", 2)]
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        await b.close()

    run(main())


def test_a_partial_batch_leaves_after_max_wait_while_another_is_in_flight():
    async def main():
        model = Model(gate=True)
        b = batcher(model, max_concurrent=2, max_wait=0.02)
        first = asyncio.create_task(b.submit("v1", 0, later()))
        await settle()
        second = asyncio.create_task(b.submit("v1", 1, later()))
        await settle()
        assert model.batches == [[0]], "with a batch in flight, a partial batch waits up to max_wait"
        await asyncio.wait_for(asyncio.shield(_until(lambda: len(model.batches) == 2)), 2)
        model.gate.set()
        await asyncio.gather(first, second)
        await b.close()

    run(main())


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def test_errors_reach_every_caller_of_the_batch():
    async def main():
        b = batcher(Model(fail=Unavailable("down")))
        results = await asyncio.gather(*(b.submit("v1", i, later()) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results)
        b2 = batcher(Model(fail=RuntimeError("bug")))
        with pytest.raises(GatewayError) as err:
            await b2.submit("v1", 0, later())   # an idle model: sent from this very task
        assert err.value.kind is ErrorKind.INTERNAL
        await asyncio.sleep(0.01)  # and that task was not left with a cancellation pending
        await b.close()
        await b2.close()

    run(main())


def test_a_row_that_is_an_error_fails_its_item_alone():
    async def send(key, payloads, deadline):
        return [InvalidImage("not an image") if p == "bad" else p for p in payloads]

    async def main():
        model = Model(gate=True)
        b = batcher(model)
        blocker = asyncio.create_task(b.submit("v1", "first", later()))
        await settle()
        b._send = send  # the queued items go to a send that fails one of them
        tasks = [asyncio.create_task(b.submit("v1", p, later())) for p in ("good", "bad", "fine")]
        await settle()
        model.gate.set()
        await blocker
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [r.value for r in (results[0], results[2])] == ["good", "fine"]
        assert isinstance(results[1], InvalidImage)
        await b.close()

    run(main())


def test_a_caller_that_gives_up_is_dropped_and_a_call_nobody_waits_for_is_cancelled():
    async def main():
        model = Model(gate=True)
        b = batcher(model)
        busy = asyncio.create_task(b.submit("v1", "busy", later()))
        await settle()
        gone = asyncio.create_task(b.submit("v1", "gone", later()))
        kept = asyncio.create_task(b.submit("v1", "kept", later()))
        await settle()
        gone.cancel()
        await settle()
        busy.cancel()   # the only caller of the call in flight
        await settle()
        assert model.cancelled == 1
        model.gate.set()
        assert (await kept).value == ("v1", "kept")
        assert model.batches[-1] == ["kept"]
        await b.close()

    run(main())


def test_each_caller_keeps_its_own_deadline():
    async def main():
        model = Model(gate=True)
        b = batcher(model)
        blocker = asyncio.create_task(b.submit("v1", "first", later()))
        await settle()
        expired = asyncio.create_task(b.submit("v1", "expired", later(0.0)))
        impatient = asyncio.create_task(b.submit("v1", "impatient", later(5)))
        patient = asyncio.create_task(b.submit("v1", "patient", later(30)))
        await settle()
        model.gate.set()
        await blocker
        with pytest.raises(DeadlineExceeded):
            await expired   # past its deadline before its batch left: never sent
        assert "expired" not in model.batches[1]
        assert model.deadlines[1] == max(model.deadlines[1:]) and model.deadlines[1] > later(20), \
            "the backend call must last as long as its most patient caller needs"
        # The impatient caller's own wait ends at its deadline (the core's timeout); the batch goes on.
        model.gate.clear()
        slow = asyncio.create_task(b.submit("v1", "slow", later(30)))
        short = asyncio.create_task(b.submit("v1", "short", later(30)))
        await settle()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await asyncio.shield(short)
        short.cancel()
        model.gate.set()
        assert (await patient).value == ("v1", "patient") and (await impatient).value == ("v1", "impatient")
        assert (await slow).value == ("v1", "slow")
        await b.close()

    run(main())


def test_versions_never_share_a_batch():
    async def main():
        model = Model(gate=True)
        b = batcher(model)
        blocker = asyncio.create_task(b.submit("v1", 0, later()))
        await settle()
        tasks = [asyncio.create_task(b.submit(key, i, later())) for i, key in enumerate(["v1", "v2", "v1", "v2"], 1)]
        await settle()
        model.gate.set()
        await asyncio.gather(blocker, *tasks)
        assert sorted(map(sorted, model.batches[1:])) == [[1, 3], [2, 4]]
        await b.close()

    run(main())


def test_batches_are_filled_round_robin_so_a_quiet_caller_skips_the_flood():
    async def main():
        model = Model(gate=True)
        b = batcher(model)
        blocker = asyncio.create_task(b.submit("v1", "blocker", later(), caller="flood"))
        await settle()
        flood = [asyncio.create_task(b.submit("v1", f"f{i}", later(), caller="flood")) for i in range(12)]
        await settle()
        quiet = asyncio.create_task(b.submit("v1", "q0", later(), caller="quiet"))
        await settle()
        model.gate.set()
        await asyncio.gather(blocker, quiet, *flood)
        assert "q0" in model.batches[1], f"the quiet caller waited behind the flood: {model.batches}"
        assert model.batches[1][:2] == ["f0", "q0"] or model.batches[1][:2] == ["q0", "f0"]
        await b.close()

    run(main())


def test_a_caller_with_nothing_in_flight_skips_the_wait_for_a_slot():
    async def main():
        model = Model(gate=True)
        policy = {"nightly": (1.0, True, 0)}  # a bulk caller
        b = batcher(model, express=True, max_concurrent=1,
                    policy=lambda caller: policy.get(caller, (1.0, False, 0)))

        heavy = [asyncio.create_task(b.submit("v1", "h0", later(), caller="heavy"))]
        await settle()
        heavy += [asyncio.create_task(b.submit("v1", f"h{i}", later(), caller="heavy")) for i in range(1, 6)]
        await settle()
        assert model.batches == [["h0"]]  # the only slot: taken
        bulk = asyncio.create_task(b.submit("v1", "b0", later(), caller="nightly"))
        await settle()
        assert model.batches == [["h0"]], "a bulk caller waits for a slot"
        light = asyncio.create_task(b.submit("v1", "l0", later(), caller="light"))
        await settle()
        assert model.batches == [["h0"], ["l0"]], "the light caller's item should go at once, in a batch of its own"
        again = asyncio.create_task(b.submit("v1", "h6", later(), caller="heavy"))
        await settle()
        assert len(model.batches) == 2, "a caller with items in flight waits for a slot like everyone"
        model.gate.set()
        await asyncio.gather(light, bulk, again, *heavy)
        await b.close()

    run(main())


def test_a_full_queue_turns_nobody_away_for_an_item_that_goes_express():
    async def main():
        model = Model(gate=True)
        b = batcher(model, express=True, max_concurrent=1, max_queue=2)
        heavy = [asyncio.create_task(b.submit("v1", "h0", later(), caller="heavy"))]
        await settle()
        heavy += [asyncio.create_task(b.submit("v1", f"h{i}", later(), caller="heavy")) for i in range(1, 3)]
        await settle()
        assert model.batches == [["h0"]] and b.waiting("heavy") == 2  # the slot taken, the queue full
        light = asyncio.create_task(b.submit("v1", "l0", later(), caller="light"))
        await settle()
        assert model.batches == [["h0"], ["l0"]]
        assert not any(t.done() for t in heavy[1:]), "the light item never queued: nobody had to make room"
        model.gate.set()
        await asyncio.gather(light, *heavy)
        await b.close()

    run(main())


def test_callers_that_never_queue_leave_no_state_behind():
    async def main():
        model = Model()
        b = MicroBatcher("m", model, max_batch_size=4, max_wait=0.05, max_queue=64, max_concurrent=1)
        for i in range(200):  # each finds the model idle and goes at once
            await b.submit("v1", i, later(), caller=f"client-{i}")
        assert len(model.batches) == 200
        assert not b._callers, "a caller is remembered only while it has items queued"
        await b.close()

    run(main())


def test_weights_share_batches_and_bulk_only_fills_what_interactive_leaves():
    async def main():
        policy = {"heavy": (3.0, False, 0), "light": (1.0, False, 0), "batch-job": (1.0, True, 0)}
        model = Model(gate=True)
        b = batcher(model, max_batch_size=8, policy=policy.__getitem__)
        blocker = asyncio.create_task(b.submit("v1", "x", later(), caller="light"))
        await settle()
        tasks = [asyncio.create_task(b.submit("v1", f"{caller}{i}", later(), caller=caller))
                 for caller in ("batch-job", "heavy", "light") for i in range(6)]
        await settle()
        model.gate.set()
        await asyncio.gather(blocker, *tasks)
        second = model.batches[1]
        counts = {c: sum(p.startswith(c) for p in second) for c in ("heavy", "light", "batch-job")}
        assert counts == {"heavy": 6, "light": 2, "batch-job": 0}, second  # 3:1 turns until heavy ran dry
        assert all(p.startswith("batch-job") for p in model.batches[-1])
        await b.close()

    run(main())


def test_a_full_queue_turns_away_the_heaviest_caller_never_the_quiet_one():
    async def main():
        model = Model(gate=True)
        b = batcher(model, max_queue=6)
        blocker = asyncio.create_task(b.submit("v1", "blocker", later(), caller="flood"))
        await settle()
        flood = [asyncio.create_task(b.submit("v1", f"f{i}", later(), caller="flood")) for i in range(6)]
        await settle()
        with pytest.raises(Overloaded) as refused:   # the flood itself: refused at once
            await b.submit("v1", "f6", later(), caller="flood")
        assert 0 < refused.value.retry_after <= 5
        quiet = asyncio.create_task(b.submit("v1", "q0", later(), caller="quiet"))
        await settle()
        assert isinstance(flood[-1].exception(), Overloaded), "the flood's newest should make room"
        model.gate.set()
        assert (await quiet).value == ("v1", "q0")
        await asyncio.gather(blocker, *flood[:-1])
        await b.close()

    run(main())


def test_a_caller_limit_refuses_only_that_caller():
    async def main():
        model = Model(gate=True)
        b = batcher(model, policy=lambda caller: (1.0, False, 2 if caller == "a" else 0))
        blocker = asyncio.create_task(b.submit("v1", "x", later(), caller="a"))
        await settle()
        mine = [asyncio.create_task(b.submit("v1", i, later(), caller="a")) for i in range(2)]
        await settle()
        with pytest.raises(Overloaded, match="its limit"):
            await b.submit("v1", 3, later(), caller="a")
        other = asyncio.create_task(b.submit("v1", "b", later(), caller="b"))
        await settle()
        assert b.waiting("a") == 2 and b.waiting("b") == 1
        model.gate.set()
        await asyncio.gather(blocker, other, *mine)
        await b.close()

    run(main())


def test_capacity_follows_the_fleet_and_close_answers_shutting_down():
    async def main():
        model = Model(gate=True)
        b = batcher(model, max_batch_size=1)
        tasks = [asyncio.create_task(b.submit("v1", i, later())) for i in range(3)]
        await settle()
        assert len(model.batches) == 1
        b.set_capacity(3)
        await settle()
        assert len(model.batches) == 3
        await b.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, ShuttingDown) for r in results)
        with pytest.raises(ShuttingDown):
            await b.submit("v1", 9, later())

    run(main())
