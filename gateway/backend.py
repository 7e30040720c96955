"""One model server endpoint: TF Serving's gRPC API over one long-lived grpc.aio channel.

Speaks `tensorflow.serving.PredictionService` (Predict, GetModelMetadata) and `ModelService`
(GetModelStatus) through the gateway's wire subset, so TensorFlow is never imported. Every call
carries a deadline, is counted in metrics, and has its failures translated into the gateway's
error kinds here, once; the model server's own error details go to the log, never to a client
(they name internal addresses). Which endpoint a call goes to, retries and health are the fleet's
(gateway/fleet.py).

What the gateway learns about a model version comes from here too: the input size and channels
from the `serving_default` signature in GetModelMetadata, and the labels from the `classes` output
of one Predict on a blank image (docs/architecture.md, "The model directory contract").
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from gateway import tensors
from gateway.errors import DeadlineExceeded, GatewayError, Overloaded, Unavailable
from gateway.metrics import Metrics
from gateway.types import (CLASSES, OOD_SCORE, OOD_THRESHOLD, SCORES, InputSpec, Scores, ServedVersion,
                           VersionState)
from gateway.wire import ModelServiceStub, PredictionServiceStub, apis

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
PREFERRED_INPUT = "images"
AVAILABLE = "AVAILABLE"

# Errors that say "this model server is not healthy" (they count towards ejecting it). A
# DEADLINE_EXCEEDED usually says the caller was impatient, so it does not count.
FAILURE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# Reconnect quickly after the model server restarts (gRPC's default backoff grows to 120 s).
_RECONNECT_BACKOFF_MS = (100, 1000)


@dataclass(frozen=True)
class Signature:
    """The part of a model version's `serving_default` signature the gateway needs."""

    version: int
    input_name: str
    input: InputSpec
    ood: bool = False   # it has the outputs ood_score and ood_threshold


class ModelNotServed(Unavailable):
    """The model server does not know this model (not loaded, or not configured there)."""


class VersionGone(Unavailable):
    """The model server no longer serves the version asked for (it was replaced by a newer one)."""


class CallFailed(Unavailable):
    """A call failed in a way that says the endpoint is unhealthy (UNAVAILABLE, INTERNAL, UNKNOWN)."""

    def __init__(self, message: str, code: grpc.StatusCode):
        super().__init__(message)
        self.code = code


def channel_options(max_message_bytes: int, keepalive_seconds: float, tls_server_name: str | None,
                    round_robin: bool) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 0),  # retries are the fleet's, with a budget
        ("grpc.initial_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[0]),
        ("grpc.min_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[1]),
    ]
    if round_robin:
        options.append(("grpc.lb_policy_name", "round_robin"))
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    return options


class Endpoint:
    """A client of one model server (`address` is HOST:PORT, or a whole gRPC target in channel mode)."""

    def __init__(self, address: str, *, metrics: Metrics, call_timeout: float, options: list,
                 credentials: grpc.ChannelCredentials | None = None):
        # Must be built inside the running event loop: the aio channel binds to it.
        self.address = address
        self.inflight = 0        # Predict calls in flight now (the least loaded endpoint gets the next)
        self._metrics = metrics
        self._call_timeout = call_timeout
        self._channel = (grpc.aio.insecure_channel(address, options=options) if credentials is None
                         else grpc.aio.secure_channel(address, credentials, options=options))
        self._predictions = PredictionServiceStub(self._channel)
        self._models = ModelServiceStub(self._channel)

    async def close(self, grace: float | None = None) -> None:
        """Close the channel; with `grace`, calls in flight get that long to finish first."""
        await self._channel.close(grace)

    # -- what the gateway asks -------------------------------------------------------------

    async def model_status(self, name: str) -> list[VersionState]:
        response = await self._call("GetModelStatus", self._models.GetModelStatus, status_request(name), name,
                                    quiet=True)
        return parse_status(response)

    async def signature(self, name: str, version: int) -> Signature:
        response = await self._call("GetModelMetadata", self._predictions.GetModelMetadata,
                                    metadata_request(name, version), name, pinned=True)
        return parse_signature(name, response)

    async def labels(self, name: str, signature: Signature) -> tuple[str, ...]:
        """The version's labels: the `classes` output of one Predict on a blank image."""
        spec = signature.input
        request = predict_request(name, signature.version, signature.input_name, bytes(spec.nbytes), 1, spec, CLASSES)
        response = await self._call("Predict", self._predictions.Predict, request, name, pinned=True)
        try:
            return parse_labels(response)
        except (KeyError, ValueError, IndexError) as exc:
            raise Unavailable(f"model {name} version {signature.version} has no usable `{CLASSES}` "
                              f"output: {exc}") from None

    async def describe(self, name: str, version: int) -> ServedVersion:
        """Input and labels of one version, asked of this endpoint."""
        signature = await self.signature(name, version)
        labels = await self.labels(name, signature)
        return ServedVersion(name, signature.version, signature.input_name, signature.input, labels, signature.ood)

    async def predict(self, info: ServedVersion, pixels: bytes, count: int, deadline: float) -> list[Scores]:
        """Scores for `count` images (`pixels` holds them back to back), one per image."""
        request = predict_request(info.name, info.version, info.input_name, pixels, count, info.input, info.outputs)
        self.inflight += 1
        try:
            response = await self._call("Predict", self._predictions.Predict, request, info.name,
                                        deadline=deadline, pinned=True)
        finally:
            self.inflight -= 1
        try:
            rows = parse_scores(response, count, len(info.labels))
            if not info.ood:
                return [Scores(row) for row in rows]
            ood = parse_per_image(response, OOD_SCORE, count)
            limits = parse_per_image(response, OOD_THRESHOLD, count)
            return [Scores(row, s, t) for row, s, t in zip(rows, ood, limits)]
        except (KeyError, ValueError) as exc:
            log.error("model %s version %s answered unusable scores: %s", info.name, info.version, exc)
            raise CallFailed(f"the model server's answer for model {info.name} was unusable",
                             grpc.StatusCode.INTERNAL) from None

    # -- one call, with deadline, metrics and error translation -----------------------------

    async def _call(self, method: str, rpc, request, model: str, *, deadline: float | None = None,
                    pinned: bool = False, quiet: bool = False):
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self._call_timeout
        timeout = deadline - loop.time()
        if timeout <= 0:
            raise DeadlineExceeded("the deadline passed before the model server answered")
        started = time.perf_counter()
        self._metrics.backend_inflight.inc()
        try:
            response = await rpc(request, timeout=timeout)
        except asyncio.CancelledError:
            # Whoever waited for this call gave up (deadline, client gone, shutdown): cancelling
            # the await cancels the RPC on the wire too, so the model server can drop it.
            self._record(method, "CANCELLED", started)
            raise
        except grpc.aio.AioRpcError as err:
            self._record(method, err.code().name, started)
            log.log(logging.DEBUG if quiet else logging.WARNING, "model server %s: %s for model %s: %s: %s",
                    self.address, method, model, err.code().name, err.details())
            raise self._translate(err, model, pinned) from None
        except grpc.aio.UsageError:  # the channel closed under the call (the endpoint left the fleet)
            self._record(method, "UNAVAILABLE", started)
            raise CallFailed(f"the channel to model server {self.address} is closed",
                             grpc.StatusCode.UNAVAILABLE) from None
        finally:
            self._metrics.backend_inflight.dec()
        self._record(method, "OK", started)
        return response

    def _record(self, method: str, code: str, started: float) -> None:
        self._metrics.backend_requests_of(method, code).inc()
        self._metrics.backend_seconds_of(method).observe(time.perf_counter() - started)

    @staticmethod
    def _translate(err: grpc.aio.AioRpcError, model: str, pinned: bool) -> GatewayError:
        """The client-facing error for a failed call (the details stay in the log)."""
        code = err.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded("the deadline passed while waiting for the model server")
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return Overloaded("the model server is overloaded; retry later")
        if code is grpc.StatusCode.NOT_FOUND:
            if pinned:
                return VersionGone(f"the model server no longer serves that version of model {model}")
            return ModelNotServed(f"model {model} is not loaded on the model server")
        if code in FAILURE_CODES:
            return CallFailed("the model server is unavailable" if code is grpc.StatusCode.UNAVAILABLE
                              else f"the model server failed the request ({code.name})", code)
        return Unavailable(f"the model server failed the request ({code.name})")


# -- the messages: built and read here, so tests/gateway/test_wire_compat.py can check them byte for byte ----

def predict_request(name: str, version: int, input_name: str, pixels: bytes, count: int,
                    spec: InputSpec, output: str | tuple[str, ...]) -> apis.PredictRequest:
    """Predict on `count` images (uint8 tensor_content), pinned to `version`, for the named output(s)."""
    request = apis.PredictRequest(output_filter=[output] if isinstance(output, str) else list(output))
    request.model_spec.name = name
    request.model_spec.version.value = version
    request.model_spec.signature_name = SIGNATURE
    request.inputs[input_name].CopyFrom(tensors.uint8_tensor(pixels, (count, spec.height, spec.width, spec.channels)))
    return request


def status_request(name: str) -> apis.GetModelStatusRequest:
    request = apis.GetModelStatusRequest()
    request.model_spec.name = name
    return request


def metadata_request(name: str, version: int) -> apis.GetModelMetadataRequest:
    request = apis.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    request.model_spec.version.value = version
    return request


def parse_status(response: apis.GetModelStatusResponse) -> list[VersionState]:
    return [VersionState(s.version, apis.ModelVersionStatus.State.Name(s.state)) for s in response.model_version_status]


def parse_scores(response: apis.PredictResponse, count: int, classes: int) -> list[list[float]]:
    """The `scores` output as `count` rows of `classes` floats (TensorError/KeyError otherwise)."""
    scores = response.outputs[SCORES]
    shape = tensors.shape_of(scores)
    if shape != (count, classes):
        raise tensors.TensorError(f"shape {list(shape)}, expected {[count, classes]}")
    return tensors.rows(tensors.float_values(scores), shape)


def parse_per_image(response: apis.PredictResponse, output: str, count: int) -> list[float]:
    """A float output with one value per image (shape [count])."""
    tensor = response.outputs[output]
    shape = tensors.shape_of(tensor)
    if shape != (count,):
        raise tensors.TensorError(f"`{output}` has shape {list(shape)}, expected {[count]}")
    return tensors.float_values(tensor)


def parse_labels(response: apis.PredictResponse) -> tuple[str, ...]:
    """The first row of the `classes` output, as text."""
    classes = response.outputs[CLASSES]
    values = tensors.string_values(classes)
    return tuple(v.decode("utf-8") for v in tensors.rows(values, tensors.shape_of(classes))[0])


def parse_signature(name: str, response: apis.GetModelMetadataResponse) -> Signature:
    """Input name, size and channels of `serving_default`, or Unavailable saying what is wrong."""
    version = response.model_spec.version.value
    where = f"model {name} version {version}"
    signatures = apis.SignatureDefMap()
    if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(signatures):
        raise Unavailable(f"{where}: the model server sent no signature_def metadata")
    if SIGNATURE not in signatures.signature_def:
        raise Unavailable(f"{where} has no `{SIGNATURE}` signature")
    signature = signatures.signature_def[SIGNATURE]
    images = [(key, info) for key, info in signature.inputs.items()
              if info.dtype == tensors.DT_UINT8 and len(info.tensor_shape.dim) == 4]
    images.sort(key=lambda item: item[0] != PREFERRED_INPUT)
    if not images:
        raise Unavailable(f"{where}: `{SIGNATURE}` has no uint8 [batch, H, W, C] input")
    input_name, info = images[0]
    missing = {SCORES, CLASSES} - set(signature.outputs)
    if missing:
        raise Unavailable(f"{where}: `{SIGNATURE}` lacks the outputs {sorted(missing)}")
    _, height, width, channels = (dim.size for dim in info.tensor_shape.dim)
    try:
        spec = InputSpec(height, width, channels)
    except ValueError as exc:
        raise Unavailable(f"{where}: {exc}") from None
    return Signature(version, input_name, spec, {OOD_SCORE, OOD_THRESHOLD} <= set(signature.outputs))
