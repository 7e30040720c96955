"""The gRPC channel the clients keep for their lifetime: options, retry service config, credentials.

Defaults that ride out a gateway restart with no code of the caller's:

  * reconnect backoff 100 ms to 1 s (grpc's own default grows to 120 s, so a restarted gateway
    would be noticed minutes late);
  * calls wait for a connection (`wait_for_ready`) instead of failing while there is none; the
    call's deadline still bounds the wait;
  * no grpc retry policy: the client's own retries (retry.py: attempts, deadline, budget) are the
    only layer, so a call reaches the gateway at most `RetryPolicy.max_attempts` times. (grpc still
    re-sends, transparently, a call that never left the client.)

`channel_options` given to a client are applied over these (a list of grpc channel arguments).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import grpc

from ._version import __version__
from .errors import ClassifierError, closed, from_rpc_error
from .retry import Deadline, Retrier, RetryPolicy

SERVICE = "classifier.v1.Classifier"
PathOrPem = Union[str, "os.PathLike[str]", bytes]

SERVICE_CONFIG: Dict[str, Any] = {
    "methodConfig": [{"name": [{"service": SERVICE}], "waitForReady": True}],
}

DEFAULT_CHANNEL_OPTIONS: Dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.service_config": json.dumps(SERVICE_CONFIG),
    "grpc.max_receive_message_length": 16 * 1024 * 1024,
    "grpc.primary_user_agent": f"imgclass-client/{__version__}",
}


def _pem(value: Optional[PathOrPem]) -> Optional[bytes]:
    """PEM bytes as given, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class Security:
    """TLS, mutual TLS and the API key; every field optional.

    tls:        use TLS, trusting the system's roots (implied by `ca`, `cert` and `key`)
    ca:         PEM CA bundle (a path, or the PEM bytes) the gateway's certificate must chain to
    cert, key:  client certificate and its key, for mutual TLS (both or neither)
    api_key:    sent as `authorization: Bearer <key>` on every call
    server_name: the name to expect in the gateway's certificate when the target's host differs
    """

    tls: bool = False
    ca: Optional[PathOrPem] = None
    cert: Optional[PathOrPem] = None
    key: Optional[PathOrPem] = None
    api_key: Optional[str] = None
    server_name: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate (cert) and its key go together")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca is not None or self.cert is not None

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_pem(self.ca), _pem(self.key), _pem(self.cert))

    def ssl_context(self):
        """An ssl.SSLContext for REST over https."""
        import ssl
        import tempfile

        ca = _pem(self.ca)
        context = ssl.create_default_context(cadata=ca.decode() if ca else None)
        if self.cert is not None:
            if isinstance(self.cert, bytes) or isinstance(self.key, bytes):
                # ssl loads a certificate chain from files only.
                with tempfile.TemporaryDirectory() as tmp:
                    cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                    cert.write_bytes(_pem(self.cert) or b"")
                    key.write_bytes(_pem(self.key) or b"")
                    context.load_cert_chain(cert, key)
            else:
                context.load_cert_chain(self.cert, self.key)
        return context


def channel_arguments(security: Security, overrides: Union[Dict[str, Any], Sequence[Tuple[str, Any]], None]
                      ) -> List[Tuple[str, Any]]:
    options = dict(DEFAULT_CHANNEL_OPTIONS)
    if security.server_name:
        options["grpc.ssl_target_name_override"] = security.server_name
    options.update(dict(overrides or {}))
    return list(options.items())


def call_metadata(security: Security, client_id: Optional[str], canary_key: Optional[str],
                  request_id: Optional[str] = None) -> Tuple[Tuple[str, str], ...]:
    """The metadata of one call (the same names are REST headers)."""
    pairs = []
    if security.api_key:
        pairs.append(("authorization", f"Bearer {security.api_key}"))
    if client_id:
        pairs.append(("x-client-id", client_id))
    if canary_key:
        pairs.append(("x-canary-key", canary_key))
    if request_id:
        pairs.append(("x-request-id", request_id))
    return tuple(pairs)


@dataclass(frozen=True)
class Methods:
    """The four RPCs as multicallables of one channel (a grpc or a grpc.aio channel).

    Built from the descriptors, not from the generated *_pb2_grpc module: that module refuses to
    import under a grpcio older than the grpcio-tools that wrote it, and the client accepts older."""

    classify: Any
    classify_batch: Any
    classify_stream: Any
    list_models: Any

    @classmethod
    def of(cls, channel: Any) -> "Methods":
        from .proto.classifier.v1 import classifier_pb2 as pb

        def method(kind: str, name: str, request: Any, response: Any) -> Any:
            return getattr(channel, kind)(f"/{SERVICE}/{name}", request_serializer=request.SerializeToString,
                                          response_deserializer=response.FromString)

        return cls(
            method("unary_unary", "Classify", pb.ClassifyRequest, pb.ClassifyResponse),
            method("unary_unary", "ClassifyBatch", pb.ClassifyBatchRequest, pb.ClassifyBatchResponse),
            method("stream_stream", "ClassifyStream", pb.ClassifyRequest, pb.ClassifyResponse),
            method("unary_unary", "ListModels", pb.ListModelsRequest, pb.ListModelsResponse),
        )


def request_id_of(metadata: Optional[Sequence[Tuple[str, Any]]]) -> str:
    for key, value in metadata or ():
        if key == "x-request-id":
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def rpc_error(exc: grpc.RpcError) -> ClassifierError:
    """The typed error of a failed call (grpc's sync or aio error)."""
    code = exc.code() if hasattr(exc, "code") else None
    return from_rpc_error(code.name if code is not None else "UNKNOWN",
                          exc.details() if hasattr(exc, "details") else str(exc),
                          exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else (),
                          exc.initial_metadata() if hasattr(exc, "initial_metadata") else ())


class GrpcClientBase:
    """What ClassifierClient and AsyncClassifierClient share: settings, channel, metadata, deadlines.

    target:          host:port of the gateway (any grpc target: dns:///name:port, ipv4:..., ...)
    timeout:         seconds per call, retries included (10; None: no deadline); every method
                     takes its own `timeout` too. Streams have no deadline unless given one.
    tls, ca, cert, key, server_name, api_key: see Security
    retry:           RetryPolicy() by default; RetryPolicy(max_attempts=1) turns retries off
    wait_for_ready:  calls wait for a connection instead of failing at once (True)
    client_id:       sent as x-client-id; canary_key: sent as x-canary-key (sticky canary side)
    channel_options: grpc channel arguments applied over DEFAULT_CHANNEL_OPTIONS
    """

    _grpc: Any = grpc  # the module whose channels the subclass uses (grpc or grpc.aio)

    def __init__(self, target: str = "localhost:50051", *, timeout: Optional[float] = 10.0, tls: bool = False,
                 ca: Optional[PathOrPem] = None, cert: Optional[PathOrPem] = None, key: Optional[PathOrPem] = None,
                 server_name: Optional[str] = None, api_key: Optional[str] = None,
                 retry: Optional[RetryPolicy] = None, wait_for_ready: bool = True, client_id: Optional[str] = None,
                 canary_key: Optional[str] = None,
                 channel_options: Union[Dict[str, Any], Sequence[Tuple[str, Any]], None] = None):
        self.target = target
        self.timeout = timeout
        self._security = Security(tls, ca, cert, key, api_key, server_name)
        self._retrier = Retrier(retry or RetryPolicy())
        self._wait_for_ready = wait_for_ready
        self._client_id, self._canary_key = client_id, canary_key
        options = channel_arguments(self._security, channel_options)
        self._channel = (self._grpc.secure_channel(target, self._security.grpc_credentials(), options)
                         if self._security.uses_tls else self._grpc.insecure_channel(target, options))
        self._rpc = Methods.of(self._channel)
        self._closed = False  # set by close(): calls then raise errors.closed(), never retried
        self._inputs: Dict[str, Any] = {}  # model ("" for the default) -> its imaging.InputSpec, for shrink=True

    def _check_open(self) -> None:
        if self._closed:
            raise closed()

    def _error(self, exc: grpc.RpcError) -> ClassifierError:
        """The typed error of a failed call; errors.closed() when close() cancelled it."""
        return closed() if self._closed else rpc_error(exc)

    def _deadline(self, timeout: Optional[float]) -> Deadline:
        return Deadline(self.timeout if timeout is None else timeout)

    def _metadata(self, request_id: Optional[str]) -> Tuple[Tuple[str, str], ...]:
        return call_metadata(self._security, self._client_id, self._canary_key, request_id)
