"""The gateway: classifier.v1 over gRPC and REST in front of a fleet of TF Serving model servers.

A map of the package (one module, one job):

    server.py        python -m gateway: one asyncio loop running the gRPC and HTTP servers
    workers.py       workers: N - N gateway processes on the same ports (SO_REUSEPORT)
    settings.py      the one settings object (flags > GATEWAY_* env > YAML > defaults)
    reload.py        the config file re-read when it changes: models.*, backend, callers apply live
    types.py         the domain types: ImageRequest, ServedVersion, Decision, Classification, ...
    grpc_service.py  gRPC transport: classifier.v1 servicer, health, reflection
    grpc_interceptors.py  before every gRPC handler: API key check, undecodable or oversized messages
    rest.py          REST transport: create_app puts the rest_* modules together
    rest_routes.py   REST routes: classify (single, batch), models, fleet, probes, /metrics, the web page
    rest_requests.py reading a REST request: deadline header, body within limits, image parts
    rest_middleware.py  around every route: request record, API key, 500s; the one error body
    rest_schemas.py  response models and OpenAPI pieces;  rest_openapi.py: /openapi.json, /docs
    auth.py          API keys: the one check both transports run
    callers.py       who is calling (API key name, x-client-id, address), bounded metric labels
    tls.py           TLS / mutual TLS for both ports and for the channels to the model servers
    converters.py    core results <-> classifier.v1 messages and REST JSON
    status.py        errors as google.rpc.Status (ErrorInfo, RetryInfo) for gRPC
    core.py          the transport-free service: route -> decode -> batch -> predict -> decide
    routing.py       which model version answers a request (labels, default, canary, shadow shares)
    registry.py      the models fronted: their settings, routing over the fleet, readiness
    fleet.py         the model server endpoints: resolution, health, served versions, Predict calls
    targets.py       the backend setting parsed (one endpoint, a static list, dns:///)
    backend.py       one model server endpoint: TF Serving gRPC API, deadlines, error mapping
    resilience.py    endpoint health (ejection, readmission) and the retry budget
    shadow.py        shadow copies to a candidate version, compared off the critical path
    canary_report.py python -m gateway.canary_report: PROMOTE or HOLD from the shadow metrics
    decode.py        safe image decoding with Pillow, in a bounded thread pool
    batcher.py       micro-batching with fair queueing per caller into one Predict
    thresholds.py    the answer rules: scores -> decision ("not sure" and its reason included)
    tensors.py       TensorProto encode/decode without numpy
    wire.py          the TF Serving wire subset, in a private descriptor pool
    errors.py        the error kinds and THE table to gRPC codes, HTTP statuses and reasons
    metrics.py       Prometheus metrics;  logs.py: structured logs, one line per request
    client.py        python -m gateway.client: the command-line client (over imgclass-client)

How the pieces work together: docs/architecture.md.
The gateway never imports TensorFlow: it stays small (idle RSS well under 150 MB).
"""
