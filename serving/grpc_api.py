"""gRPC adapter: `tensorflow.serving.PredictionService` and `ModelService` on grpc.aio.

Thin: each method turns the official request message into `ServingCore` calls and the result into
the official response, and a `ServingError` into the same status code and message TF Serving
returns.
"""

from __future__ import annotations

import functools
import logging
from typing import Awaitable, Callable

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import tensors
from serving.core import SIGNATURE_DEF_FIELD, ServingCore, echo_spec, requested_version
from serving.errors import ServingError, failed_precondition, internal

log = logging.getLogger(__name__)


def _handler(api: str | None) -> Callable:
    """Count and time a call as `api` (None: not counted), and turn errors into gRPC statuses."""

    def decorate(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
        @functools.wraps(method)
        async def handle(self, request, context: grpc.aio.ServicerContext):
            try:
                if api is None:
                    return await method(self, request, context)
                with self._core.metrics.track_request(_model_name(request), api, "GRPC"):
                    return await method(self, request, context)
            except ServingError as exc:
                await context.abort(exc.code, exc.message)
            except Exception as exc:  # a bug: logged with its traceback, the client gets INTERNAL
                log.exception("%s failed", api or method.__name__)
                error = internal(f"internal error in {api or method.__name__}: {type(exc).__name__}")
                await context.abort(error.code, error.message)
        return handle

    return decorate


def _model_name(request) -> str:
    if isinstance(request, inference_pb2.MultiInferenceRequest):
        return request.tasks[0].model_spec.name if request.tasks else ""
    return request.model_spec.name


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore, *, tensor_content: bool):
        self._core = core
        self._tensor_content = tensor_content

    @_handler("Predict")
    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        name, version, label = requested_version(request)
        with self._core.servable(name, version, label) as serving:
            signature_name, signature = self._core.signature(serving, request.model_spec.signature_name)
            if signature is None:
                raise failed_precondition(f'Serving signature key "{signature_name}" not found.')
            inputs = signature.decode_inputs(request.inputs)
            outputs = await self._core.run(serving, signature, inputs, request.output_filter)
            served_version = serving.version
        response = predict_pb2.PredictResponse()
        echo_spec(response.model_spec, name, signature_name, served_version)
        for alias, array in outputs.items():
            tensors.to_proto(array, signature.outputs[alias].dtype, as_content=self._tensor_content,
                             out=response.outputs[alias])
        return response

    @_handler("GetModelMetadata")
    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                               context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        name, version, label = requested_version(request)
        served_version, signature_defs = self._core.metadata(name, version, label, list(request.metadata_field))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = served_version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
        return response

    @_handler("Classify")
    async def Classify(self, request: classification_pb2.ClassificationRequest,
                       context) -> classification_pb2.ClassificationResponse:
        return await self._core.classify(request)

    @_handler("Regress")
    async def Regress(self, request: regression_pb2.RegressionRequest, context) -> regression_pb2.RegressionResponse:
        return await self._core.regress(request)

    @_handler("MultiInference")
    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest,
                             context) -> inference_pb2.MultiInferenceResponse:
        return await self._core.multi_inference(request)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore):
        self._core = core

    @_handler(None)
    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                             context) -> get_model_status_pb2.GetModelStatusResponse:
        name, version, _ = requested_version(request)
        return self._core.status(name, version)

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
