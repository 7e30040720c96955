"""The gateway's domain types, in one place: what a request is, what it becomes, and what is known
of a model version. Plain frozen dataclasses, free of any transport, and named so they never collide
with the wire's messages (classifier.v1's ClassifyRequest, ClassifyResponse, Prediction, ModelInfo;
TF Serving's ModelSpec, ...): gateway/converters.py translates between the two.

    ImageRequest   one image to classify, as the transports hand it to the core
    InputSpec      a model version's input image: height, width, channels (defined beside the
                   decoding code both gateway and client run, imgclass_client.imaging)
    ServedVersion  a model version as the gateway uses it: input spec, labels, optional outputs
    Scores         one image's raw answer from a model server: class scores (+ OOD score)
    VersionState   one version's state as a model server reports it
    LabelScore     one label and its score
    Decision       the answer the thresholds give: label, confident, reason, top-k
    Classification a Decision with the model and version that produced it, and stage timings
    ModelSummary   a model as ListModels shows it
    Readiness      whether the gateway is ready, and each model's state
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imgclass_client.imaging import InputSpec  # shared with the client's shrink=True: one decoder for both

# Output names of a model's `serving_default` signature (README, "Training and the exported model").
SCORES = "scores"
CLASSES = "classes"
OOD_SCORE = "ood_score"          # optional: how unlike the training data each image is,
OOD_THRESHOLD = "ood_threshold"  # and the model's own calibrated limit (gateway/thresholds.py)
CONFIDENT = "CONFIDENT"          # Decision.reason when the thresholds passed (the others: thresholds.REASONS)


@dataclass(frozen=True)
class ImageRequest:
    model: str              # "" means the default model
    image: bytes
    top_k: int = 0          # 0 means the configured default
    version: int = 0        # 0 means the gateway's choice
    version_label: str = ""  # a label of the model's settings, or "" for none
    route_key: str | None = None  # keeps a caller on the same side of a canary split (x-canary-key, API key)
    caller: str = ""        # who asks (gateway/callers.py): its own queue in the batcher
    id: str = ""            # the caller's name for this image, echoed in its answer


@dataclass(frozen=True)
class ServedVersion:
    """One model version as the gateway uses it: requests decoded for `input` go to `version`."""

    name: str
    version: int
    input_name: str
    input: InputSpec
    labels: tuple[str, ...]
    ood: bool = False   # it exports ood_score and ood_threshold

    @property
    def outputs(self) -> tuple[str, ...]:
        """What a Predict for this version asks for."""
        return (SCORES, OOD_SCORE, OOD_THRESHOLD) if self.ood else (SCORES,)

    def compatible(self, other: "ServedVersion") -> bool:
        """Pixels decoded for `other` fit this version too."""
        return (self.input_name, self.input) == (other.input_name, other.input)


@dataclass(frozen=True)
class Scores:
    """One image's answer from the model: class scores, and the OOD score and threshold when exported."""

    values: list[float]
    ood_score: float | None = None
    ood_threshold: float | None = None


@dataclass(frozen=True)
class VersionState:
    version: int
    state: str  # AVAILABLE, LOADING, ... as TF Serving names them


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class Decision:
    """The answer for one image: the decided label, why (one of thresholds.REASONS) and the top-k
    (highest first; scores that are not finite numbers last, gateway/thresholds.py)."""

    label: str
    confident: bool
    predictions: tuple[LabelScore, ...]
    reason: str = CONFIDENT


@dataclass(frozen=True)
class Classification:
    model: str
    version: int
    decision: Decision
    stages: dict[str, float] = field(default_factory=dict, compare=False)  # seconds per stage


@dataclass(frozen=True)
class ModelSummary:
    name: str
    version: int
    labels: tuple[str, ...]
    state: str
    input: InputSpec | None = None  # the version's image input (None: no usable version)


@dataclass(frozen=True)
class Readiness:
    ready: bool                 # a model server serves the default model and the gateway is not draining
    draining: bool
    models: dict[str, str]      # model -> state
