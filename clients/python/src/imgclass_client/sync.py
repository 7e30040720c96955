"""`ClassifierClient`: the blocking gRPC client (one long-lived channel, thread-safe).

    with ClassifierClient("gateway:50051") as client:
        print(client.classify(Path("shoe.png").read_bytes()).label)
        for result in client.classify_many(Path("photos").glob("*.jpg"), concurrency=8):
            print(result.id, result.classification.label if result.ok else result.error)

Raises ClassifierError subclasses (errors.py); classify_many, classify_batch and stream put each
image's own error in its ItemResult instead and raise only what fails the whole call. After
close(), calls raise (and calls in flight end with) errors.closed(): code CANCELLED, not retried.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import grpc

from ._wire import (CallOptions, ShrinkTo, StreamOrder, batch_answers, call_options, classification, in_threads, load,
                    model_info, model_input, numbered, ordered, readable)
from .channel import GrpcClientBase, request_id_of
from .errors import ClassifierError, closed
from .proto.classifier.v1 import classifier_pb2 as pb
from .retry import Deadline
from .types import Classification, Images, ImageSource, ItemResult, ModelInfo


class ClassifierClient(GrpcClientBase):
    """A gateway's classifier.v1 API over gRPC; arguments as GrpcClientBase's (channel.py)."""

    # -- the API ------------------------------------------------------------------------------------

    def classify(self, image: ImageSource, *, model: str = "", top_k: int = 0, version: int = 0,
                 version_label: str = "", id: str = "", timeout: Optional[float] = None,
                 request_id: Optional[str] = None, shrink: bool = False,
                 shrink_to: Optional[ShrinkTo] = None) -> Classification:
        """One image (bytes or a path) -> its Classification; raises ClassifierError.

        `shrink=True` decodes and shrinks the image here with the gateway's own decoder and sends a
        PNG of exactly the model's input size (ListModels says it, asked once per model; or give
        `shrink_to=(height, width, channels)`, e.g. (28, 28, 1)): the same answer, for a fraction
        of the bytes and of the gateway's CPU. Needs Pillow (`imgclass-client[shrink]`)."""
        options = self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        request = options.request(load(image, options), id)
        response, rid = self._unary(self._rpc.classify, request, self._deadline(timeout), request_id)
        return classification(response, rid)

    def classify_many(self, images: Images, *, concurrency: int = 8, model: str = "", top_k: int = 0,
                      version: int = 0, version_label: str = "", timeout: Optional[float] = None,
                      shrink: bool = False, shrink_to: Optional[ShrinkTo] = None) -> List[ItemResult]:
        """Many images, `concurrency` calls in flight, each retried on its own; results in input order.

        `images`: bytes or paths (read as they are sent; an unreadable file is that item's
        ImageReadError), or a mapping id -> image. Consumed lazily: a generator is fine.
        `shrink_to` as for classify (each image shrunk in its calling thread)."""
        options = self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)

        def one(index: int, id: str, source: ImageSource) -> ItemResult:
            try:
                request = options.request(load(source, options))
                response, rid = self._unary(self._rpc.classify, request, self._deadline(timeout), None)
                return ItemResult(index, id, classification(response, rid))
            except ClassifierError as exc:
                return ItemResult(index, id, error=exc)

        return in_threads(one, numbered(images), concurrency)

    def classify_batch(self, images: Images, *, model: str = "", top_k: int = 0, version: int = 0,
                       version_label: str = "", timeout: Optional[float] = None, shrink: bool = False,
                       shrink_to: Optional[ShrinkTo] = None) -> List[ItemResult]:
        """Up to the gateway's limit (64) of images in one ClassifyBatch call; results in input order.

        Each image's failure is its own ItemResult; images that failed retryably (Overloaded,
        Unavailable) are sent again in a smaller batch while the retry policy allows. Raises
        ClassifierError for what fails the whole call (TooLarge for too many images, ...).
        `shrink_to` as for classify."""
        options = self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        deadline = self._deadline(timeout)
        results: Dict[int, ItemResult] = {}
        todo = readable(numbered(images), results, options)
        attempt = 0
        while todo:
            attempt += 1
            request = pb.ClassifyBatchRequest(requests=[options.request(image) for _, _, image in todo])
            response, rid = self._unary(self._rpc.classify_batch, request, deadline, None)
            todo, delay = batch_answers(todo, response.responses, rid, results, self._retrier, attempt, deadline)
            time.sleep(delay)
        return ordered(results.values())

    def stream(self, images: Images, *, model: str = "", top_k: int = 0, version: int = 0,
               version_label: str = "", timeout: Optional[float] = None, shrink: bool = False,
               shrink_to: Optional[ShrinkTo] = None) -> Iterator[ItemResult]:
        """ClassifyStream: yields each image's ItemResult in input order, as answers arrive.

        Images are read (and shrunk, with `shrink_to` as for classify) and sent as the stream asks
        for them. A stream is not retried: what fails the whole stream raises ClassifierError
        (classify_many retries each image instead)."""
        order = StreamOrder(images, self._options(model, top_k, version, version_label, shrink, shrink_to, timeout))
        self._check_open()
        try:
            call = self._rpc.classify_stream(order.requests(), timeout=timeout, metadata=self._metadata(None),
                                             wait_for_ready=self._wait_for_ready)
        except ValueError:  # grpc: "Cannot invoke RPC on closed channel!"
            raise closed() from None
        try:
            rid = ""
            for response in call:
                rid = rid or request_id_of(call.initial_metadata())
                yield from order.answer(response, rid)
            yield from order.unsent()
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()  # no-op once the stream has ended; stops it when the caller stopped reading

    def list_models(self, *, timeout: Optional[float] = None) -> List[ModelInfo]:
        response, _ = self._unary(self._rpc.list_models, pb.ListModelsRequest(), self._deadline(timeout), None)
        return [model_info(m) for m in response.models]

    def close(self) -> None:
        """Closes the channel; calls in flight end with errors.closed() (classify_many: in their items)."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> "ClassifierClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _options(self, model: str, top_k: int, version: int, version_label: str, shrink: bool,
                 shrink_to: Optional[ShrinkTo], timeout: Optional[float]) -> CallOptions:
        return call_options(model, top_k, version, version_label, shrink, shrink_to,
                            lambda name: self._input_of(name, timeout))

    def _input_of(self, model: str, timeout: Optional[float]) -> Any:
        """The input size of `model` ("": the default model) from ListModels, asked once per model."""
        if model not in self._inputs:
            spec = model_input(self.list_models(timeout=timeout), model)
            if spec is None:
                return None
            self._inputs[model] = spec
        return self._inputs[model]

    # -- one call, retried ----------------------------------------------------------------------------

    def _unary(self, method: Any, request: Any, deadline: Deadline, request_id: Optional[str]) -> Tuple[Any, str]:
        self._retrier.budget.record_call()
        attempt = 0
        while True:
            attempt += 1
            self._check_open()
            try:
                response, call = method.with_call(request, timeout=deadline.timeout(),
                                                  metadata=self._metadata(request_id),
                                                  wait_for_ready=self._wait_for_ready)
                return response, request_id_of(call.trailing_metadata()) or request_id_of(call.initial_metadata())
            except grpc.RpcError as exc:
                error = self._error(exc)
            except ValueError:  # grpc: "Cannot invoke RPC on closed channel!" (closed between the check and the call)
                if not self._closed:
                    raise
                error = closed()
            time.sleep(self._retrier.next_delay(error, attempt, deadline))
