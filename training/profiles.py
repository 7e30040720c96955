"""Named sets of training defaults (`--profile`); explicit flags override any of them.

`full` is the recipe behind the committed `models/fashion/1` (`make train-full`): about 40-60
minutes on two shared cores. `quick` (`make train`, and the default) trades accuracy for a run of
about two minutes, for trying the pipeline end to end.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    epochs: int
    batch_size: int
    limit: int | None  # training images to use (None: all)
    learning_rate: float  # peak of the one-cycle schedule
    warmup_fraction: float  # share of the steps spent warming up


PROFILES: dict[str, Profile] = {
    "quick": Profile(name="quick", summary="2 epochs on 24,000 images, about two minutes",
                     epochs=2, batch_size=128, limit=24000, learning_rate=3e-3, warmup_fraction=0.15),
    "full": Profile(name="full", summary="15 epochs on all images, about 30-45 minutes: the committed default model",
                    epochs=15, batch_size=128, limit=None, learning_rate=3e-3, warmup_fraction=0.15),
}
DEFAULT_PROFILE = "quick"
