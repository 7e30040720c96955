"""The gateway: classifier.v1 over gRPC and REST in front of a TF Serving model server.

A map of the package (one module, one job):

    server.py        python -m gateway: one asyncio loop running the gRPC and HTTP servers
    settings.py      the one settings object (flags > GATEWAY_* env > YAML > defaults)
    grpc_service.py  gRPC transport: classifier.v1 servicer, health, reflection
    grpc_interceptors.py  before every gRPC handler: API key check, undecodable messages
    rest.py          REST transport: create_app puts the rest_* modules together
    rest_routes.py   REST routes: classify (single, batch), models, probes, /metrics, the web page
    rest_requests.py reading a REST request: deadline header, body within limits, image parts
    rest_middleware.py  around every route: request record, API key, 500s; the one error body
    rest_schemas.py  response models and OpenAPI pieces;  rest_openapi.py: /openapi.json, /docs
    auth.py          API keys: the one check both transports run
    tls.py           TLS / mutual TLS for both ports and for the channel to the model server
    converters.py    core results <-> classifier.v1 messages and REST JSON
    core.py          the transport-free service: decode -> batch -> predict -> decide
    decode.py        safe image decoding with Pillow, in a bounded thread pool
    batcher.py       micro-batching of concurrent requests into one Predict
    thresholds.py    the answer rules: scores -> decision ("not sure" included)
    registry.py      what is known about each model (version, input, labels), kept current
    backend.py       the model server client (TF Serving gRPC API, deadlines, error mapping)
    resilience.py    circuit breaker and retry budget for the backend
    tensors.py       TensorProto encode/decode without numpy
    wire.py          the TF Serving wire subset (never in a process with TensorFlow)
    errors.py        the error kinds and THE table to gRPC codes and HTTP statuses
    metrics.py       Prometheus metrics;  logs.py: structured logs, one line per request
    client.py        python -m gateway.client: the command-line client

The gateway never imports TensorFlow: it stays small (idle RSS well under 150 MB).
"""
