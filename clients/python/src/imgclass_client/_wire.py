"""Conversions between the client's types and the wire: classifier.v1 messages and REST JSON.

Shared by the gRPC and REST clients, so both answer with the same types. Also reads image sources
(bytes or a path), shrinks them when asked (`shrink_to`, with imaging.py), and holds the per-call
options.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set,
                    Tuple, Union)

from .errors import ClassifierError, ImageReadError, from_rest_body, from_status
from .proto.classifier.v1 import classifier_pb2 as pb
from .retry import Deadline, Retrier
from .types import Classification, Images, ImageSource, ItemResult, ModelInfo, Prediction

if TYPE_CHECKING:
    from .imaging import InputSpec

# What `shrink_to` accepts: (height, width, channels), or the text GET /v1/fleet shows ("28x28x1").
ShrinkTo = Union[Tuple[int, int, int], str, "InputSpec"]
SHRINK_NEEDS = "shrinking needs Pillow: pip install 'imgclass-client[shrink]'"

_REASONS = {v.number: v.name for v in pb.ClassifyResponse.Reason.DESCRIPTOR.values}
_STATE_TEXT = {  # ModelInfo.state_code -> the text `state` carries for it
    pb.ModelInfo.STATE_START: "START", pb.ModelInfo.STATE_LOADING: "LOADING",
    pb.ModelInfo.STATE_AVAILABLE: "AVAILABLE", pb.ModelInfo.STATE_UNLOADING: "UNLOADING",
    pb.ModelInfo.STATE_END: "END", pb.ModelInfo.STATE_UNREACHABLE: "UNAVAILABLE",
    pb.ModelInfo.STATE_NOT_SERVED: "NOT_FOUND", pb.ModelInfo.STATE_UNUSABLE: "UNUSABLE",
}


@dataclass(frozen=True)
class CallOptions:
    """What one classify call asks for (every field optional; the gateway's defaults apply)."""

    model: str = ""
    top_k: int = 0
    version: int = 0
    version_label: str = ""
    shrink_to: Optional["InputSpec"] = None  # the model's input: images are shrunk to it before sending

    def __post_init__(self) -> None:
        if self.version and self.version_label:
            raise ValueError("give version or version_label, not both")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (the gateway's default) or more, not {self.top_k}")

    def prepare(self, image: bytes) -> bytes:
        """The bytes to send for `image`: itself, or shrunk (see `shrink`)."""
        return image if self.shrink_to is None else shrink(image, self.shrink_to)

    def request(self, image: bytes, id: str = "") -> pb.ClassifyRequest:
        return pb.ClassifyRequest(model=self.model, image=image, top_k=self.top_k, version=self.version,
                                  version_label=self.version_label, id=id)

    def query(self) -> Dict[str, Union[int, str]]:
        params: Dict[str, Union[int, str]] = {}
        if self.top_k:
            params["top_k"] = self.top_k
        if self.version:
            params["version"] = self.version
        if self.version_label:
            params["version_label"] = self.version_label
        return params


# -- images -----------------------------------------------------------------------------------------

def read_image(source: ImageSource) -> bytes:
    """The encoded image: bytes as given, or the file's bytes (ImageReadError when unreadable)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        with open(source, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ImageReadError(f"{os.fspath(source)}: {exc.strerror or exc}", code="FILE") from None


def call_options(model: str, top_k: int, version: int, version_label: str, shrink: bool,
                 shrink_to: Optional[ShrinkTo], learn: Callable[[str], Optional["InputSpec"]]) -> CallOptions:
    """One call's options. With `shrink` and no `shrink_to`, the model's input size comes from
    `learn(model)` (the gRPC clients ask ListModels, the REST client GET /v1/fleet); None from it
    (a model the gateway does not front) sends the images as they are, for the gateway to refuse."""
    spec = None
    if shrink_to is not None:
        spec = input_spec(shrink_to)
    elif shrink:
        input_spec("1x1x1")  # Pillow is there, before asking the gateway anything
        spec = learn(model)
    return CallOptions(model, top_k, version, version_label, spec)


def input_spec(shrink_to: ShrinkTo) -> "InputSpec":
    """`shrink_to` as an imaging.InputSpec; ImportError without Pillow, ValueError when malformed."""
    try:
        from .imaging import InputSpec
    except ImportError as exc:
        raise ImportError(f"{SHRINK_NEEDS} ({exc})") from None
    if isinstance(shrink_to, InputSpec):
        return shrink_to
    if isinstance(shrink_to, str):
        return InputSpec.parse(shrink_to)
    height, width, channels = shrink_to
    return InputSpec(int(height), int(width), int(channels))


def shrink(image: bytes, spec: "InputSpec") -> bytes:
    """`image` as a lossless PNG of exactly the model's input size, made by the gateway's own decoder
    (imaging.py): the gateway decodes it to the pixels it would have made of `image`. An image that
    decoder refuses is sent as it is, for the gateway to answer; so is one already smaller than its PNG."""
    from .imaging import ImageDecodeError, shrink_image

    try:
        small = shrink_image(image, spec)
    except ImageDecodeError:
        return image
    return small if len(small) < len(image) else image


def load(source: ImageSource, options: CallOptions) -> bytes:
    """The bytes to send for `source`: read (ImageReadError when unreadable), shrunk when asked."""
    return options.prepare(read_image(source))


def numbered(images: Images) -> Iterator[Tuple[int, str, ImageSource]]:
    """(index, id, source) for each image: a mapping's keys are ids, a path is its own id."""
    if isinstance(images, Mapping):
        pairs: Iterable[Tuple[str, ImageSource]] = images.items()
    else:
        pairs = ((os.fspath(s) if isinstance(s, (str, os.PathLike)) else "", s) for s in images)
    for index, (id, source) in enumerate(pairs):
        yield index, str(id), source


# -- answers ----------------------------------------------------------------------------------------

def classification(response: pb.ClassifyResponse, request_id: str = "") -> Classification:
    return Classification(
        label=response.label, confident=response.confident,
        predictions=tuple(Prediction(p.label, p.score) for p in response.predictions),
        model=response.model, model_version=response.model_version,
        reason=_REASONS.get(response.reason, "") if response.reason else "", id=response.id,
        request_id=request_id)


def item_result(index: int, id: str, response: pb.ClassifyResponse, request_id: str = "") -> ItemResult:
    """One entry of a batch or stream: its classification or its own error."""
    if response.HasField("error"):
        return ItemResult(index, id or response.id, error=from_status(response.error, request_id))
    return ItemResult(index, id or response.id, classification(response, request_id))


def model_info(model: pb.ModelInfo) -> ModelInfo:
    state = model.state or _STATE_TEXT.get(model.state_code, "UNKNOWN")
    size = model.input
    text = f"{size.height}x{size.width}x{size.channels}" if model.HasField("input") and size.height > 0 else ""
    return ModelInfo(model.name, model.version, tuple(model.labels), state, text)


def model_input(models: Sequence[ModelInfo], model: str) -> Optional["InputSpec"]:
    """The image input of `model` ("": the gateway's default, its first) as ListModels gives it;
    None for a model the gateway does not front, or that has no usable version now (the call
    itself then fails with the gateway's own error); ValueError when an older gateway does not say."""
    chosen = next((m for m in models if m.name == model), None) if model else next(iter(models), None)
    if chosen is None or (not chosen.input and not chosen.available):
        return None
    if not chosen.input:
        raise ValueError("this gateway does not say its models' input size (it predates ModelInfo.input): "
                         "give shrink_to=(height, width, channels)")
    return input_spec(chosen.input)


def classification_from_json(body: Mapping[str, Any], request_id: str = "") -> Classification:
    reason = body.get("reason") or ""
    return Classification(
        label=str(body.get("label", "")), confident=bool(body.get("confident", False)),
        predictions=tuple(Prediction(str(p["label"]), float(p["score"])) for p in body.get("predictions", ())),
        model=str(body.get("model", "")), model_version=int(body.get("model_version", 0)),
        reason="" if reason == "REASON_UNSPECIFIED" else str(reason), id=str(body.get("id", "")),
        request_id=request_id)


def item_result_from_json(index: int, id: str, body: Mapping[str, Any], request_id: str) -> ItemResult:
    if body.get("error"):
        return ItemResult(index, id or str(body.get("id", "")),
                          error=from_rest_body(body["error"], http_status=None, request_id=request_id))
    return ItemResult(index, id or str(body.get("id", "")), classification_from_json(body, request_id))


def model_info_from_json(body: Mapping[str, Any]) -> ModelInfo:
    return ModelInfo(str(body["name"]), int(body.get("version", 0)), tuple(body.get("labels", ())),
                     str(body.get("state", "UNKNOWN")), str(body.get("input") or ""))


def ordered(results: Iterable[ItemResult]) -> List[ItemResult]:
    return sorted(results, key=lambda r: r.index)


# -- batches and streams -------------------------------------------------------------------------

class StreamOrder:
    """Matches a stream's answers to its images. Answers come back in the order the requests went
    out; an unreadable image is never sent and takes its place among the answers as its error."""

    def __init__(self, images: Images, options: CallOptions):
        self._images, self._options = images, options
        self._expected: collections.deque = collections.deque()  # (index, id, local error or None)

    def requests(self) -> Iterator[pb.ClassifyRequest]:
        """The stream's requests, each image read as the stream asks for it (the asyncio client
        reads them off its event loop instead, with `sources`, `skipped` and `sent`)."""
        for index, id, source in self.sources():
            try:
                image = load(source, self._options)
            except ClassifierError as exc:
                self.skipped(index, id, exc)
                continue
            yield self.sent(index, id, image)

    def sources(self) -> Iterator[Tuple[int, str, ImageSource]]:
        return numbered(self._images)

    def skipped(self, index: int, id: str, error: ClassifierError) -> None:
        """An image that could not be read: its error takes its place among the answers."""
        self._expected.append((index, id, error))

    def sent(self, index: int, id: str, image: bytes) -> pb.ClassifyRequest:
        """The request for an image read as `image`, expecting its answer."""
        self._expected.append((index, id, None))
        return self._options.request(image)

    def answer(self, response: pb.ClassifyResponse, request_id: str) -> List[ItemResult]:
        """The next answer's result, after those of unreadable images before it."""
        results = self.unsent()
        index, id, _ = self._expected.popleft()
        return [*results, item_result(index, id, response, request_id)]

    def unsent(self) -> List[ItemResult]:
        """The images at the front that were never sent (unreadable files)."""
        results = []
        while self._expected and self._expected[0][2] is not None:
            index, id, error = self._expected.popleft()
            results.append(ItemResult(index, id, error=error))
        return results


def readable(items: Iterable[Tuple[int, str, ImageSource]], results: Dict[int, ItemResult],
             options: CallOptions) -> List[Tuple[int, str, bytes]]:
    """The images as bytes to send; unreadable ones go straight into `results` with their error."""
    todo = []
    for index, id, source in items:
        try:
            todo.append((index, id, load(source, options)))
        except ClassifierError as exc:
            results[index] = ItemResult(index, id, error=exc)
    return todo


def batch_answers(todo: List[Tuple[int, str, bytes]], answers: Sequence[Any], rid: str,
                  results: Dict[int, ItemResult], retrier: Retrier, attempt: int, deadline: Deadline,
                  read: Callable[[int, str, Any, str], ItemResult] = item_result
                  ) -> Tuple[List[Tuple[int, str, bytes]], float]:
    """Files one batch's answers (read into ItemResults by `read`: item_result for ClassifyBatch's,
    item_result_from_json for REST's) into `results`; returns the items that failed retryably, to
    send again, and the wait before; none when the retry policy allows no retry (they keep their
    errors). Every client's classify_batch retries this way."""
    if len(answers) != len(todo):
        raise ClassifierError(f"the gateway answered {len(answers)} of {len(todo)} images",
                              code="INTERNAL", request_id=rid)
    again = []
    for (index, id, image), answer in zip(todo, answers):
        result = read(index, id, answer, rid)
        results[index] = result
        if result.error is not None and result.error.retryable:
            again.append((index, id, image))
    if not again:
        return [], 0.0
    errors = [results[index].error for index, _, _ in again]
    worst = max(errors, key=lambda e: e.retry_after or 0.0)
    try:
        return again, retrier.next_delay(worst, attempt, deadline)
    except ClassifierError:
        return [], 0.0  # no retry left: the items keep their errors


def in_threads(one: Callable[[int, str, ImageSource], ItemResult], items: Iterable[Tuple[int, str, ImageSource]],
               concurrency: int) -> List[ItemResult]:
    """`one(index, id, source)` for every item, `concurrency` at a time; taken from `items` lazily."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    results: List[ItemResult] = []
    with ThreadPoolExecutor(concurrency, thread_name_prefix="imgclass") as pool:
        pending: Set[Future] = set()
        for item in items:
            if len(pending) >= concurrency:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                results.extend(f.result() for f in done)
            pending.add(pool.submit(one, *item))
        results.extend(f.result() for f in pending)
    return ordered(results)
