"""Named sets of training defaults (`--profile`); explicit flags override any of them.

`full` is the recipe behind the committed `models/fashion/1` (`make train-full`): 35 minutes on
two shared cores, 93.5 % test accuracy. `quick` (`make train`, and the default) trades accuracy
for a run of about two minutes (about 83 %), for trying the pipeline end to end.
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
    # Small batches: more steps for the same compute, which is what a two-epoch run lacks.
    "quick": Profile(name="quick", summary="2 epochs on 16,000 images, about two minutes (~83 %)",
                     epochs=2, batch_size=64, limit=16000, learning_rate=3e-3, warmup_fraction=0.15),
    "full": Profile(name="full", summary="15 epochs on all images, 35 minutes here (93.5 %): the committed model",
                    epochs=15, batch_size=128, limit=None, learning_rate=3e-3, warmup_fraction=0.15),
}
DEFAULT_PROFILE = "quick"
