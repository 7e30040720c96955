"""Load shapes: how many users run at each moment of a test.

* `steady`: ramp up to `users` at `spawn_rate` and hold until the end. For SLO runs: the verdict
  is about a known, constant load.
* `step`: `steps` equal stages of 1/steps, 2/steps, ... of `users`. Throughput grows with users
  until the system saturates; past that knee only latency grows. The report tabulates throughput
  and latency per stage to show where it is.
* `spike`: a quarter of `users` for the first 40 % of the run, all of them at once for the next
  20 %, then back to a quarter. Shows whether the system sheds the burst (errors, queueing) and
  recovers once it passes.

Each shape is a pure function of the elapsed time, returning (users, spawn rate) or None to end
the test; `loadtest/locustfile.py` wraps the selected one in Locust's `LoadTestShape`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

Stage = tuple[int, float]  # (users, spawn rate per second)


@dataclass(frozen=True)
class ShapeParams:
    users: int
    spawn_rate: float
    duration_s: float
    steps: int = 5

    def __post_init__(self) -> None:
        if self.users < 1 or self.spawn_rate <= 0 or self.duration_s <= 0 or self.steps < 1:
            raise ValueError(f"invalid load shape parameters: {self}")


def steady(elapsed: float, p: ShapeParams) -> Stage | None:
    return None if elapsed >= p.duration_s else (p.users, p.spawn_rate)


def step(elapsed: float, p: ShapeParams) -> Stage | None:
    if elapsed >= p.duration_s:
        return None
    stage = min(p.steps, int(elapsed // (p.duration_s / p.steps)) + 1)
    return max(1, math.ceil(p.users * stage / p.steps)), p.spawn_rate


SPIKE_START, SPIKE_END = 0.4, 0.6  # fractions of the run


def spike(elapsed: float, p: ShapeParams) -> Stage | None:
    if elapsed >= p.duration_s:
        return None
    baseline = max(1, p.users // 4)
    burst_rate = max(p.spawn_rate, float(p.users))  # the burst arrives (and leaves) within a second
    if SPIKE_START * p.duration_s <= elapsed < SPIKE_END * p.duration_s:
        return p.users, burst_rate
    return baseline, burst_rate if elapsed >= SPIKE_END * p.duration_s else p.spawn_rate


SHAPES: dict[str, Callable[[float, ShapeParams], Stage | None]] = {
    "steady": steady, "step": step, "spike": spike,
}
