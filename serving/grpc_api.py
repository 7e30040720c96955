"""gRPC adapter: `tensorflow.serving.PredictionService` and `ModelService` on grpc.aio.

Thin: each method turns the official request message into `ServingCore` calls and the result into
the official response, and a `ServingError` into the same status code and message TF Serving
returns. Classify, Regress and MultiInference answer UNIMPLEMENTED: this server hosts Predict
signatures only.
"""

from __future__ import annotations

import functools
import logging
from typing import Awaitable, Callable

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import tensors
from serving.core import SIGNATURE_DEF_FIELD, ServingCore
from serving.errors import ServingError, failed_precondition, internal, invalid_argument, unimplemented

log = logging.getLogger(__name__)


def _spec(request) -> tuple[str, int | None, str | None]:
    """(name, version, label) of a request's model_spec; INVALID_ARGUMENT without one."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    return spec.name, version, spec.version_label or None


def _handler(api: str | None) -> Callable:
    """Count and time a call as `api` (None: not counted), and turn errors into gRPC statuses."""

    def decorate(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
        @functools.wraps(method)
        async def handle(self, request, context: grpc.aio.ServicerContext):
            try:
                if api is None:
                    return await method(self, request, context)
                model_spec = getattr(request, "model_spec", None)
                with self._core.metrics.track_request(model_spec.name if model_spec else "", api, "GRPC"):
                    return await method(self, request, context)
            except ServingError as exc:
                await context.abort(exc.code, exc.message)
            except Exception as exc:  # a bug: logged with its traceback, the client gets INTERNAL
                log.exception("%s failed", api or method.__name__)
                error = internal(f"internal error in {api or method.__name__}: {type(exc).__name__}")
                await context.abort(error.code, error.message)
        return handle

    return decorate


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore, *, tensor_content: bool):
        self._core = core
        self._tensor_content = tensor_content

    @_handler("Predict")
    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        name, version, label = _spec(request)
        with self._core.servable(name, version, label) as serving:
            signature_name, signature = self._core.signature(serving, request.model_spec.signature_name)
            if signature is None:
                raise failed_precondition(f'Serving signature key "{signature_name}" not found.')
            inputs = signature.decode_inputs(request.inputs)
            outputs = await self._core.run(serving, signature, inputs, request.output_filter)
            served_version = serving.version
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.signature_name = signature_name
        response.model_spec.version.value = served_version
        for alias, array in outputs.items():
            tensors.to_proto(array, signature.outputs[alias].dtype, as_content=self._tensor_content,
                             out=response.outputs[alias])
        return response

    @_handler("GetModelMetadata")
    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                               context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        name, version, label = _spec(request)
        served_version, signature_defs = self._core.metadata(name, version, label, list(request.metadata_field))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = served_version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
        return response

    @_handler("Classify")
    async def Classify(self, request, context):
        raise _not_predict("Classify")

    @_handler("Regress")
    async def Regress(self, request, context):
        raise _not_predict("Regress")

    @_handler("MultiInference")
    async def MultiInference(self, request, context):
        raise _not_predict("MultiInference")


def _not_predict(api: str) -> ServingError:
    return unimplemented(f"{api} is not implemented by python -m serving, which serves Predict signatures; "
                         f"call Predict with the model's signature instead")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore):
        self._core = core

    @_handler(None)
    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                             context) -> get_model_status_pb2.GetModelStatusResponse:
        name, version, label = _spec(request)
        return self._core.status(name, version, label)

    @_handler(None)
    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,
                                        context) -> model_management_pb2.ReloadConfigResponse:
        log.info("Received a ReloadConfigRequest for %d model(s)", len(request.config.model_config_list.config))
        await self._core.reload_config(request.config)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()
        return response


def add_services(server: grpc.aio.Server, core: ServingCore, *, tensor_content: bool) -> list[str]:
    """Register both services; returns their full names (for health checking)."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, tensor_content=tensor_content), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    return ["tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"]
