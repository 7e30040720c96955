"""The learning-rate schedule: one cycle (linear warm-up, then cosine decay), per step.

A short warm-up lets batch norm statistics settle before big steps; the long cosine tail gives
most of the final accuracy in few epochs, which is what a CPU budget needs.
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="training")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Rises linearly from `peak / start_div` to `peak` over `warmup_fraction` of `total_steps`,
    then falls along a cosine to `peak / final_div`."""

    def __init__(self, peak: float, total_steps: int, warmup_fraction: float = 0.15,
                 start_div: float = 10.0, final_div: float = 1000.0):
        self.peak = peak
        self.total_steps = max(1, int(total_steps))
        self.warmup_fraction = warmup_fraction
        self.start_div = start_div
        self.final_div = final_div

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = max(1.0, self.warmup_fraction * self.total_steps)
        start, end = self.peak / self.start_div, self.peak / self.final_div
        rising = start + (self.peak - start) * step / warmup
        progress = ops.clip((step - warmup) / max(1.0, self.total_steps - warmup), 0.0, 1.0)
        falling = end + (self.peak - end) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < warmup, rising, falling)

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_fraction": self.warmup_fraction,
                "start_div": self.start_div, "final_div": self.final_div}
