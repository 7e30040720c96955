"""The client's result types, the same for the gRPC and REST clients.

    Prediction      one label and its score
    Classification  the gateway's answer for one image: the decision, whether it is sure, the
                    top predictions, the model and version that answered, the request id
    ItemResult      one image of classify_many / classify_batch / stream: a Classification or
                    the ClassifierError of that image alone, with its index and id
    ModelInfo       a model behind the gateway: version, labels, state

`ImageSource` is what the client accepts as an image: the encoded bytes, or a path it reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

from .errors import ClassifierError

ImageSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]
# Images for the many-image methods: sources, or a mapping id -> source.
Images = Union[Iterable[ImageSource], Mapping[str, ImageSource]]


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """The answer for one image.

    `label` is the decision: the top label when the model's thresholds pass (`confident`), else
    the gateway's uncertain label ("not sure" by default). `reason` says why (CONFIDENT,
    OUT_OF_DISTRIBUTION, LOW_SCORE, SMALL_MARGIN, IN_BAND; empty from an older gateway).
    """

    label: str
    confident: bool
    predictions: Tuple[Prediction, ...]
    model: str
    model_version: int
    reason: str = ""
    id: str = ""            # the request's id, echoed by the gateway
    request_id: str = ""    # the gateway's x-request-id for the call

    @property
    def top(self) -> Optional[Prediction]:
        return self.predictions[0] if self.predictions else None

    def to_dict(self) -> Dict[str, Any]:
        """The gateway's REST JSON form of the answer: model, model_version, label, confident, reason
        (empty from a gateway that does not send it), predictions."""
        return {"model": self.model, "model_version": self.model_version, "label": self.label,
                "confident": self.confident, "reason": self.reason,
                "predictions": [{"label": p.label, "score": p.score} for p in self.predictions]}


@dataclass(frozen=True)
class ItemResult:
    """One image's outcome: exactly one of `classification` and `error` is set.

    `index` is the image's position in the input; `id` is the key it had in a mapping input, its
    path for a path input, else empty."""

    index: int
    id: str = ""
    classification: Optional[Classification] = None
    error: Optional[ClassifierError] = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Classification:
        """The classification, or raise the item's error."""
        if self.error is not None:
            raise self.error
        assert self.classification is not None
        return self.classification


@dataclass(frozen=True)
class ModelInfo:
    """A model version behind the gateway; `state` is e.g. AVAILABLE, LOADING, UNAVAILABLE."""

    name: str
    version: int
    labels: Tuple[str, ...]
    state: str
    input: str = ""  # the version's image input, "28x28x1" (what shrink=True shrinks to); "" if not known

    @property
    def available(self) -> bool:
        return self.state == "AVAILABLE"
