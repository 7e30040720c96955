"""The data plane: what both APIs do, free of gRPC and HTTP.

The gRPC and REST adapters translate their messages into calls on `ServingCore` and its errors
back into their status codes; everything else (routing to a version, validating a request,
running it, directly or through the batcher, and answering metadata and status) is here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import Executor
from typing import Iterator, Mapping, Sequence

import grpc
import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import configs
from serving.batching import Batcher
from serving.errors import ServingError, invalid_argument
from serving.manager import ModelManager, ServableVersion
from serving.metrics import ServerMetrics
from serving.signatures import DEFAULT_SIGNATURE, Signature

SIGNATURE_DEF_FIELD = "signature_def"


class ServingCore:
    def __init__(self, manager: ModelManager, executor: Executor, metrics: ServerMetrics,
                 batcher: Batcher | None = None):
        self.manager = manager
        self.metrics = metrics
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

    def status(self, name: str, version: int | None, label: str | None) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus (gRPC and REST): every version's state, with its error when it failed."""
        if label:
            version = self.manager.label_version(name, label)
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
