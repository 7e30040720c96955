"""`AsyncClassifierClient`: the asyncio gRPC client (grpc.aio; one long-lived channel).

    async with AsyncClassifierClient("gateway:50051") as client:
        print((await client.classify(Path("shoe.png").read_bytes())).label)
        results = await client.classify_many(Path("photos").glob("*.jpg"), concurrency=16)

The same methods, options, results and errors as the blocking ClassifierClient (sync.py). Create it
inside the event loop that uses it (grpc.aio channels belong to one loop): used from another loop,
a call raises RuntimeError saying so. Files are read and shrunk in threads, off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import grpc
import grpc.aio

from ._wire import (CallOptions, ShrinkTo, StreamOrder, batch_answers, call_options, classification, input_spec, load,
                    model_info, model_input, numbered, ordered, readable)
from .channel import GrpcClientBase, request_id_of
from .errors import ClassifierError, closed
from .proto.classifier.v1 import classifier_pb2 as pb
from .retry import Deadline
from .types import Classification, Images, ImageSource, ItemResult, ModelInfo


class AsyncClassifierClient(GrpcClientBase):
    """A gateway's classifier.v1 API over gRPC, for asyncio; arguments as GrpcClientBase's (channel.py)."""

    _grpc = grpc.aio

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        try:
            self._loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # made outside a loop: it belongs to the first loop that uses it

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("this AsyncClassifierClient belongs to another event loop (grpc.aio channels are "
                               "bound to one): create the client inside the loop that uses it, e.g. in the "
                               "coroutine given to asyncio.run")

    async def classify(self, image: ImageSource, *, model: str = "", top_k: int = 0, version: int = 0,
                       version_label: str = "", id: str = "", timeout: Optional[float] = None,
                       request_id: Optional[str] = None, shrink: bool = False,
                       shrink_to: Optional[ShrinkTo] = None) -> Classification:
        """One image (bytes or a path) -> its Classification; raises ClassifierError. `shrink_to` as
        ClassifierClient.classify's (shrinking runs in a thread, off the event loop)."""
        options = await self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        request = options.request(await _load(image, options), id)
        response, rid = await self._unary(self._rpc.classify, request, self._deadline(timeout), request_id)
        return classification(response, rid)

    async def classify_many(self, images: Images, *, concurrency: int = 8, model: str = "", top_k: int = 0,
                            version: int = 0, version_label: str = "", timeout: Optional[float] = None,
                            shrink: bool = False, shrink_to: Optional[ShrinkTo] = None) -> List[ItemResult]:
        """Many images, `concurrency` calls in flight, each retried on its own; results in input order."""
        options = await self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        items = numbered(images)
        results: List[ItemResult] = []

        async def worker() -> None:
            for index, id, source in items:  # shared by the workers: each takes the next image
                try:
                    request = options.request(await _load(source, options))
                    response, rid = await self._unary(self._rpc.classify, request, self._deadline(timeout), None)
                    results.append(ItemResult(index, id, classification(response, rid)))
                except ClassifierError as exc:
                    results.append(ItemResult(index, id, error=exc))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ordered(results)

    async def classify_batch(self, images: Images, *, model: str = "", top_k: int = 0, version: int = 0,
                             version_label: str = "", timeout: Optional[float] = None, shrink: bool = False,
                             shrink_to: Optional[ShrinkTo] = None) -> List[ItemResult]:
        """Images in one ClassifyBatch call, as ClassifierClient.classify_batch."""
        options = await self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        deadline = self._deadline(timeout)
        results: Dict[int, ItemResult] = {}
        items = list(numbered(images))
        if options.shrink_to is None and all(isinstance(s, (bytes, bytearray, memoryview)) for _, _, s in items):
            todo = readable(items, results, options)
        else:  # files to read, images to shrink: off the event loop
            todo = await asyncio.get_running_loop().run_in_executor(None, readable, items, results, options)
        attempt = 0
        while todo:
            attempt += 1
            request = pb.ClassifyBatchRequest(requests=[options.request(image) for _, _, image in todo])
            response, rid = await self._unary(self._rpc.classify_batch, request, deadline, None)
            todo, delay = batch_answers(todo, response.responses, rid, results, self._retrier, attempt, deadline)
            await asyncio.sleep(delay)
        return ordered(results.values())

    async def stream(self, images: Images, *, model: str = "", top_k: int = 0, version: int = 0,
                     version_label: str = "", timeout: Optional[float] = None, shrink: bool = False,
                     shrink_to: Optional[ShrinkTo] = None) -> AsyncIterator[ItemResult]:
        """ClassifyStream, as ClassifierClient.stream: `async for result in client.stream(images)`.
        Each image is read (and shrunk) in a thread as the stream asks for it."""
        options = await self._options(model, top_k, version, version_label, shrink, shrink_to, timeout)
        order = StreamOrder(images, options)

        async def requests() -> AsyncIterator[pb.ClassifyRequest]:
            for index, id, source in order.sources():
                try:
                    image = await _load(source, options)
                except ClassifierError as exc:
                    order.skipped(index, id, exc)
                    continue
                yield order.sent(index, id, image)

        self._check_loop()
        self._check_open()
        try:
            call = self._rpc.classify_stream(requests(), timeout=timeout, metadata=self._metadata(None),
                                             wait_for_ready=self._wait_for_ready)
        except grpc.aio.UsageError:  # the channel is closed
            raise closed() from None
        try:
            rid = ""
            async for response in call:
                rid = rid or request_id_of(await call.initial_metadata())
                for result in order.answer(response, rid):
                    yield result
            for result in order.unsent():
                yield result
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        except grpc.aio.UsageError:
            raise closed() from None
        except asyncio.CancelledError:
            if not self._cancelled_by_close():
                raise
            raise closed() from None
        finally:
            call.cancel()

    async def list_models(self, *, timeout: Optional[float] = None) -> List[ModelInfo]:
        response, _ = await self._unary(self._rpc.list_models, pb.ListModelsRequest(), self._deadline(timeout), None)
        return [model_info(m) for m in response.models]

    async def _options(self, model: str, top_k: int, version: int, version_label: str, shrink: bool,
                       shrink_to: Optional[ShrinkTo], timeout: Optional[float]) -> CallOptions:
        """call_options, with the model's input size from ListModels (asked once per model) for
        shrink=True without shrink_to."""
        if shrink and shrink_to is None and model not in self._inputs:
            input_spec("1x1x1")  # Pillow is there, before asking the gateway anything
            spec = model_input(await self.list_models(timeout=timeout), model)
            if spec is not None:
                self._inputs[model] = spec
        return call_options(model, top_k, version, version_label, shrink, shrink_to, self._inputs.get)

    async def close(self) -> None:
        """Closes the channel; calls in flight end with errors.closed() (classify_many: in their items)."""
        self._closed = True
        await self._channel.close()

    def _cancelled_by_close(self) -> bool:
        """Whether a CancelledError out of a call is close()'s doing (grpc.aio cancels the calls in
        flight so), not a cancellation of the caller's task, which must go on."""
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        return self._closed and not (cancelling is not None and cancelling())

    async def __aenter__(self) -> "AsyncClassifierClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _unary(self, method: Any, request: Any, deadline: Deadline,
                     request_id: Optional[str]) -> Tuple[Any, str]:
        self._check_loop()
        self._retrier.budget.record_call()
        attempt = 0
        while True:
            attempt += 1
            self._check_open()
            try:
                call = method(request, timeout=deadline.timeout(), metadata=self._metadata(request_id),
                              wait_for_ready=self._wait_for_ready)
                response = await call
                return response, (request_id_of(await call.trailing_metadata())
                                  or request_id_of(await call.initial_metadata()))
            except grpc.RpcError as exc:
                error = self._error(exc)
            except grpc.aio.UsageError:  # the channel is closed
                error = closed()
            except asyncio.CancelledError:
                if not self._cancelled_by_close():
                    raise
                error = closed()
            await asyncio.sleep(self._retrier.next_delay(error, attempt, deadline))


async def _load(source: ImageSource, options: CallOptions) -> bytes:
    """The bytes to send; reading a file and shrinking happen in a thread, off the event loop."""
    if isinstance(source, (bytes, bytearray, memoryview)) and options.shrink_to is None:
        return bytes(source)
    return await asyncio.get_running_loop().run_in_executor(None, load, source, options)
