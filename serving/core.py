"""The data plane: what both APIs do, free of gRPC and HTTP.

The gRPC and REST adapters translate their messages into calls on `ServingCore` and its errors
back into their status codes; everything else (routing to a version, validating a request,
running it, directly or through the batcher, Classify/Regress/MultiInference on tf.Examples, and
answering metadata and status) is here once. Errors are `ServingError`s with TF Serving's codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import Executor
from typing import Iterator, Mapping, Sequence

import grpc
import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from serving import classify_regress, configs
from serving.batching import Batcher
from serving.errors import ServingError, failed_precondition, internal, invalid_argument
from serving.manager import ModelManager, ServableVersion
from serving.metrics import ServerMetrics
from serving.signatures import DEFAULT_SIGNATURE, Signature

SIGNATURE_DEF_FIELD = "signature_def"
_PREDICT_METHODS = (classify_regress.PREDICT_METHOD, classify_regress.CLASSIFY_METHOD,
                    classify_regress.REGRESS_METHOD)


def requested_version(request) -> tuple[str, int | None, str | None]:
    """(name, version, label) of a request's model_spec; INVALID_ARGUMENT without one."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    return spec_version(request.model_spec)


def spec_version(spec: model_pb2.ModelSpec) -> tuple[str, int | None, str | None]:
    version = spec.version.value if spec.HasField("version") else None
    return spec.name, version, spec.version_label or None


def echo_spec(out: model_pb2.ModelSpec, name: str, signature_name: str | None, version: int) -> None:
    """The model_spec a response carries (TF Serving's MakeModelSpec)."""
    out.Clear()
    out.name = name
    if signature_name is not None:
        out.signature_name = signature_name or DEFAULT_SIGNATURE
    out.version.value = version


class ServingCore:
    def __init__(self, manager: ModelManager, executor: Executor, metrics: ServerMetrics,
                 batcher: Batcher | None = None, *, method_name_check: bool = False):
        self.manager = manager
        self.metrics = metrics
        self.method_name_check = method_name_check
        self._executor = executor
        self._batcher = batcher
        if batcher is not None:
            manager.unload_hooks.append(batcher.drop)

    @contextlib.contextmanager
    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Iterator[ServableVersion]:
        """The AVAILABLE version a request addresses, held until the block ends."""
        with self.manager.lease(name, version, label) as serving:
            yield serving

    @staticmethod
    def signature(serving: ServableVersion, name: str) -> tuple[str, Signature | None]:
        """(resolved name, signature or None); the caller words the not-found error for its API."""
        resolved = name or DEFAULT_SIGNATURE
        assert serving.loaded is not None
        return resolved, serving.loaded.signature(resolved)

    async def run(self, serving: ServableVersion, signature: Signature, inputs: Mapping[str, np.ndarray],
                  output_filter: Sequence[str] = (), *, api: str = "Predict") -> dict[str, np.ndarray]:
        """Validate and run a request on a leased version; returns the selected outputs."""
        if api == "Predict" and self.method_name_check and signature.method_name not in _PREDICT_METHODS:
            raise internal(f"Expected prediction signature method_name to be one of "
                           f"{{{', '.join(_PREDICT_METHODS)}}}. Was: {signature.method_name}")
        signature.validate_inputs(inputs)
        aliases = signature.select_outputs(output_filter)
        start = time.perf_counter()
        if self._batcher is not None:
            outputs = await self._batcher.submit(serving, serving.model, signature.name, signature, inputs)
        else:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, signature, inputs)
        self.metrics.runtime_latency.labels(serving.model, api, "TF1").observe((time.perf_counter() - start) * 1e6)
        return {alias: outputs[alias] for alias in aliases}

    def metadata(self, name: str, version: int | None, label: str | None,
                 fields: Sequence[str]) -> tuple[int, get_model_metadata_pb2.SignatureDefMap]:
        """GetModelMetadata: the version answered and its SignatureDefMap."""
        if not fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        with self.servable(name, version, label) as serving:
            assert serving.loaded is not None
            return serving.version, serving.loaded.signature_defs

    def status(self, name: str, version: int | None) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus (gRPC and REST): every version's state, with its error when it failed.

        As in TF Serving, a version label is ignored: the answer covers every version."""
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.manager.status(name, version):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = int(status.state)
            entry.status.SetInParent()
            if status.error is not None:
                entry.status.error_code = status.error.code.value[0]
                entry.status.error_message = status.error.message
        return response

    # --- tf.Example APIs --------------------------------------------------------------------------

    async def classify(self, request: classification_pb2.ClassificationRequest) -> classification_pb2.ClassificationResponse:
        response = classification_pb2.ClassificationResponse()
        await self._run_examples(request, response, classify_regress.check_classification,
                                 classify_regress.classification_result, "Classify")
        return response

    async def regress(self, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
        response = regression_pb2.RegressionResponse()
        await self._run_examples(request, response, classify_regress.check_regression,
                                 classify_regress.regression_result, "Regress")
        return response

    async def _run_examples(self, request, response, check, fill_result, api: str) -> None:
        """Classify or Regress: the request's tf.Examples through the signature it names."""
        with self.servable(*requested_version(request)) as serving:
            signature, aliases = self._example_signature(serving, request.model_spec.signature_name, check)
            examples = classify_regress.serialized_examples(request.input)
            outputs = await self.run(serving, signature, {classify_regress.INPUTS: examples}, aliases, api=api)
            fill_result(outputs, len(examples), response.result)
            echo_spec(response.model_spec, request.model_spec.name, signature.name, serving.version)

    async def multi_inference(self, request: inference_pb2.MultiInferenceRequest) -> inference_pb2.MultiInferenceResponse:
        """Several Classify/Regress signatures of one model on the same examples."""
        first = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        response = inference_pb2.MultiInferenceResponse()
        with self.servable(*spec_version(first)) as serving:
            plan, seen = [], set()
            for task in request.tasks:
                if not task.model_spec.name:
                    raise invalid_argument("Found ModelSpec with an empty model name.")
                if task.model_spec.name != first.name:
                    raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
                name = task.model_spec.signature_name or DEFAULT_SIGNATURE
                if name in seen:
                    raise invalid_argument(f"Duplicate evaluation of signature: {name}")
                seen.add(name)
                signature_def = serving.loaded.signature_defs.signature_def.get(name)
                if signature_def is None:
                    raise invalid_argument(f"Requested signature not found in model graph: {name}")
                aliases = classify_regress.check_for_method(signature_def, task.method_name, self.method_name_check)
                plan.append((task, self._callable(serving, name), aliases))
            examples = classify_regress.serialized_examples(request.input)
            for task, signature, aliases in plan:
                outputs = await self.run(serving, signature, {classify_regress.INPUTS: examples}, aliases,
                                         api="MultiInference")
                result = response.results.add()
                if task.method_name == classify_regress.CLASSIFY_METHOD:
                    classify_regress.classification_result(outputs, len(examples), result.classification_result)
                else:
                    classify_regress.regression_result(outputs, len(examples), result.regression_result)
                echo_spec(result.model_spec, task.model_spec.name, signature.name, serving.version)
        return response

    def _example_signature(self, serving: ServableVersion, name: str, check) -> tuple[Signature, list[str]]:
        assert serving.loaded is not None
        resolved, signature_def = classify_regress.signature_def(serving.loaded.signature_defs.signature_def, name)
        aliases = check(signature_def, self.method_name_check)
        return self._callable(serving, resolved), aliases

    @staticmethod
    def _callable(serving: ServableVersion, name: str) -> Signature:
        assert serving.loaded is not None
        signature = serving.loaded.signature(name)
        if signature is None:
            raise failed_precondition(f"signature {name} of {serving.id_text} cannot be called")
        return signature

    async def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """HandleReloadConfigRequest and --model_config_file polling: serve exactly `config`'s models."""
        try:
            configs.validate_model_server_config(config)
        except configs.ConfigError as exc:
            raise invalid_argument(str(exc)) from exc
        failed = await self.manager.apply_config(config)
        if failed:
            details = ", ".join(f"{{{sv.id_text} due to error: {sv.error}}}" for sv in failed)
            raise ServingError(grpc.StatusCode.UNKNOWN,
                               f"{len(failed)} servable(s) did not become available: {{{details}}}")
