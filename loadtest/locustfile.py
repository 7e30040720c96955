"""Locust load test of the gateway, over gRPC and REST, with an SLO verdict.

Usually run by `python -m loadtest.run` (`make loadtest`), which starts the stack and writes the
report. Directly, from the repository root, against a running gateway:

    .venv/bin/python -m locust -f loadtest/locustfile.py --headless -t 60s -u 16 -r 8 \\
        --host http://127.0.0.1:8080 --grpc-target 127.0.0.1:50051 --slo-p95-ms 200

Users (closed loop, no think time: users = requests in flight), as `--callers` picks them:
* `mix` (the default):
  * `GrpcClassifierUser` (weight 3): Classify, ClassifyBatch and ClassifyStream, 6:1:1.
  * `RestClassifierUser` (weight 1): `POST /v1/classify` as multipart and as a raw image body, 3:1.
* `quiet-flood`, two callers to the gateway's fair queueing (the `x-client-id` metadata):
  * `QuietCallerUser` (always exactly 1, started first): Classify, one image at a time, as `quiet`;
  * `FloodCallerUser` (every other user): Classify as `flood`.
  Their calls are reported as `Classify (quiet)` and `Classify (flood)` (and `ListModels (...)`).
Each first asks for the models and their labels (ListModels / `GET /v1/models`) and then checks
every answer against them (loadtest/checks.py). Images come from loadtest/images.py.

The load shape (`--shape steady|step|spike`, loadtest/shapes.py) reads `--users`, `--spawn-rate`
and `--run-time`. At the end, the SLO verdict (loadtest/slo.py: the aggregate limits and the
per-route/transport rules of `--slo` and `--slo-file`) decides the exit code: 0 when every limit
holds, 1 otherwise, naming the missed limits. This replaces Locust's default "1 on any failed
request": a run within its error budget passes.
"""

# gRPC must use gevent for its I/O before any channel exists (Locust has already monkey-patched
# the standard library when it imports this file).
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import functools  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
import urllib3  # noqa: E402
from locust import FastHttpUser, LoadTestShape, constant, events, task  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402
from locust.stats import StatsEntry  # noqa: E402
from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb  # noqa: E402
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc  # noqa: E402
from loadtest import options as load_options  # noqa: E402
from loadtest import shapes, slo, summary  # noqa: E402
from loadtest.checks import Answer, Catalogue, InvalidAnswer, check_answer, check_count  # noqa: E402
from loadtest.grpc_user import GrpcUser, LocustReporter  # noqa: E402
from loadtest.images import ImagePool, PoolImage  # noqa: E402

log = logging.getLogger("loadtest")

DEFAULT_DURATION_S = 60.0  # a shape without --run-time still ends
BATCH_BYTES_BUDGET = 8 * 2**20  # a batch or stream stays well under the gateway's 16 MB message limit
MAX_MESSAGE_BYTES = 32 * 2**20
POOL_SPARE_THREADS = 4  # gevent's thread pool: beyond one thread per user (see _prepare)


@events.init_command_line_parser.add_listener
def _add_options(parser, **_kwargs):
    load_options.add_options(parser, env=True)


@functools.cache
def image_pool(large_share: float) -> ImagePool:
    """One pool per process, built on first use."""
    return ImagePool.from_examples(large_share)


@events.init.add_listener
def _prepare(environment, **_kwargs):
    _pick_users(environment)
    if isinstance(environment.runner, MasterRunner):
        return  # the master runs no users
    # Under gevent, gRPC waits for each channel's events (one channel per user) in a thread of
    # gevent's pool, 10 by default: with more users than threads, an answer that has arrived waits
    # for a free thread, so each call's time includes the others'. A thread per user, a few spare.
    threads = gevent.get_hub().threadpool
    threads.maxsize = max(threads.maxsize, (environment.parsed_options.num_users or 1) + POOL_SPARE_THREADS)
    pool = image_pool(environment.parsed_options.large_share)
    log.info("image pool: %s", pool.describe())


class Workload:
    """What a user sends, from the options: model, images, top_k, deadline."""

    def __init__(self, opts, pool: ImagePool):
        self.model: str = opts.model
        self.top_k: int = opts.top_k
        self.batch_images: int = opts.batch_images
        self.timeout: float | None = opts.rpc_timeout_s or None
        self.uncertain_label: str = opts.uncertain_label
        self.pool = pool
        self.rng = random.Random()

    def image(self) -> PoolImage:
        return self.pool.pick(self.rng)

    def images(self) -> list[PoolImage]:
        return self.pool.pick_many(self.batch_images, self.rng, BATCH_BYTES_BUDGET)

    def request(self, img: PoolImage) -> pb.ClassifyRequest:
        return pb.ClassifyRequest(model=self.model, image=img.data, top_k=self.top_k)

    @classmethod
    def of(cls, environment) -> "Workload":
        opts = environment.parsed_options
        return cls(opts, image_pool(opts.large_share))

    def catalogue(self, models) -> Catalogue:
        return Catalogue.from_models(models, self.uncertain_label, self.model)


class _GrpcClassifier(GrpcUser):
    """A gRPC user of the classifier: its channel, answer checks and calls; subclasses pick tasks."""

    abstract = True
    wait_time = constant(0)
    stub_class = pb_grpc.ClassifierStub
    channel_options = (("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES))
    metadata: tuple[tuple[str, str], ...] = ()  # sent with every call

    def __init__(self, environment):
        self.work = Workload.of(environment)
        self.known: Catalogue | None = None
        super().__init__(environment)

    def grpc_target(self) -> str:
        opts = self.environment.parsed_options
        return opts.grpc_target or load_options.default_grpc_target(self.environment.host or "")

    def check_answer(self, method: str, requests: list, responses: list) -> None:
        if method == "ListModels":
            self.known = self.work.catalogue((m.name, m.labels) for m in responses[0].models)
            return
        if self.known is None:
            raise InvalidAnswer(f"{method} answered before the labels were known")
        if method == "ClassifyBatch":
            requests, responses = list(requests[0].requests), list(responses[0].responses)
        check_count(method, len(requests), len(responses))
        for req, resp in zip(requests, responses):
            check_answer(Answer.from_proto(resp), self.known, req.model, req.top_k)

    def _labels_known(self) -> bool:
        if self.known is None:
            with self.reported():
                self.stub.ListModels(pb.ListModelsRequest(), timeout=self.work.timeout, metadata=self.metadata)
        return self.known is not None

    def _classify(self) -> None:
        if self._labels_known():
            with self.reported():
                self.stub.Classify(self.work.request(self.work.image()), timeout=self.work.timeout,
                                   metadata=self.metadata)


class GrpcClassifierUser(_GrpcClassifier):
    weight = 3

    @task(6)
    def classify(self) -> None:
        self._classify()

    @task(1)
    def classify_batch(self) -> None:
        if self._labels_known():
            batch = pb.ClassifyBatchRequest(requests=[self.work.request(i) for i in self.work.images()])
            with self.reported():
                self.stub.ClassifyBatch(batch, timeout=self.work.timeout)

    @task(1)
    def classify_stream(self) -> None:
        if self._labels_known():
            requests = [self.work.request(i) for i in self.work.images()]
            with self.reported():
                for _ in self.stub.ClassifyStream(iter(requests), timeout=self.work.timeout):
                    pass  # the interceptor has read and checked the whole stream


class _CallerNamed:
    """Locust's request event, each request named after its caller: 'Classify' -> 'Classify (quiet)'."""

    def __init__(self, event, caller: str):
        self._event, self._caller = event, caller

    def fire(self, *, name: str, **kwargs) -> None:
        self._event.fire(name=load_options.caller_request(name, self._caller), **kwargs)


class _Caller(_GrpcClassifier):
    """Classify as one named caller (`x-client-id`), reported under request names of its own."""

    abstract = True
    caller = ""

    def __init__(self, environment):
        self.metadata = (("x-client-id", self.caller),)
        super().__init__(environment)
        # GrpcUser reports under the RPC's name; this caller's calls need their own, so the channel
        # is made again with the reporter firing through _CallerNamed (the first was never used).
        self._channel.close()
        reporter = LocustReporter(_CallerNamed(environment.events.request, self.caller), self.check_answer)
        self._channel = grpc.intercept_channel(
            grpc.insecure_channel(self.grpc_target(), options=list(self.channel_options)), reporter)
        self.stub = self.stub_class(self._channel)

    @task
    def classify(self) -> None:
        self._classify()


class QuietCallerUser(_Caller):
    fixed_count = 1  # exactly one, whatever --users says; Locust starts it before the flood
    caller = load_options.QUIET


class FloodCallerUser(_Caller):
    weight = 1  # every user but the quiet one
    caller = load_options.FLOOD


class RestClassifierUser(FastHttpUser):
    weight = 1
    wait_time = constant(0)

    def __init__(self, environment):
        self.work = Workload.of(environment)
        self.known: Catalogue | None = None
        self.network_timeout = self.connection_timeout = self.work.timeout or 3600.0
        super().__init__(environment)

    def _labels_known(self) -> bool:
        if self.known is None:
            with self.client.get("/v1/models", name="/v1/models", catch_response=True) as resp:
                if resp.status_code != 200:
                    resp.failure(_http_failure(resp))
                    return False
                try:
                    self.known = Catalogue.from_json(resp.json(), self.work.uncertain_label, self.work.model)
                except (InvalidAnswer, ValueError) as exc:
                    resp.failure(f"GET /v1/models: {exc}")
        return self.known is not None

    def _classify(self, name: str, body: bytes, content_type: str) -> None:
        path = f"/v1/models/{self.work.model}:classify" if self.work.model else "/v1/classify"
        with self.client.post(f"{path}?top_k={self.work.top_k}", data=body, name=name,
                              headers={"Content-Type": content_type}, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(_http_failure(resp))
                return
            try:
                check_answer(Answer.from_json(resp.json()), self.known, self.work.model, self.work.top_k)
            except (InvalidAnswer, ValueError) as exc:
                resp.failure(str(exc))

    @task(3)
    def classify_multipart(self) -> None:
        if self._labels_known():
            img = self.work.image()
            body, content_type = urllib3.encode_multipart_formdata({"image": (img.name, img.data, img.mime)})
            self._classify("/v1/classify (multipart)", body, content_type)

    @task(1)
    def classify_raw(self) -> None:
        if self._labels_known():
            img = self.work.image()
            self._classify("/v1/classify (raw body)", img.data, img.mime)


def _http_failure(resp) -> str:
    """'HTTP 503 unavailable: ...' from the gateway's error body (README.md, "API", the Errors
    table); no request id (it would make every failure unique in Locust's failure table)."""
    if not resp.status_code:
        return f"connection failed: {resp.error}"
    try:
        error = resp.json()["error"]
        return f"HTTP {resp.status_code} {error.get('code')}: {error.get('message')}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {(resp.text or '')[:200]}"


USER_MIXES = {"mix": (GrpcClassifierUser, RestClassifierUser),
              load_options.QUIET_FLOOD: (QuietCallerUser, FloodCallerUser)}


def _pick_users(environment) -> None:
    """Keep the user classes of --callers (in place: Locust's runner reads the same list); exit
    with status 1 and a message, as Locust does for an unknown user class, when the command line
    named only others."""
    wanted = USER_MIXES[environment.parsed_options.callers]
    picked = [cls for cls in environment.user_classes if cls in wanted]
    if not picked:
        log.error("--callers %s runs %s; the command line named only %s", environment.parsed_options.callers,
                  ", ".join(cls.__name__ for cls in wanted), ", ".join(cls.__name__ for cls in environment.user_classes))
        sys.exit(1)
    environment.user_classes[:] = picked


class ConfiguredShape(LoadTestShape):
    """The shape named by --shape, driven by --users, --spawn-rate and --run-time."""

    use_common_options = True

    def tick(self):
        opts = self.runner.environment.parsed_options
        params = shapes.ShapeParams(users=opts.num_users or 1, spawn_rate=opts.spawn_rate or 1.0,
                                    duration_s=opts.run_time or DEFAULT_DURATION_S, steps=opts.steps)
        return shapes.SHAPES[opts.shape](self.get_run_time(), params)


def _merged(environment, label: str, selector: slo.Selector) -> StatsEntry | None:
    """One StatsEntry over every request the selector matches (None when it matches none)."""
    matching = [e for e in environment.stats.entries.values()
                if selector.matches(slo.transport_of(e.method or ""), e.name)]
    if not matching:
        return None
    merged = StatsEntry(environment.stats, label, "")
    for entry in matching:
        merged.extend(entry)
    return merged


def _judge_rules(environment) -> list[slo.RuleResult]:
    try:
        rules = load_options.slo_rules(environment.parsed_options)
    except slo.SloSpecError as exc:  # python -m loadtest.run checks them before the run starts
        return [slo.RuleResult(slo.Rule(slo.Selector(), ()), None, (str(exc),))]
    seen = sorted({f"{slo.transport_of(e.method or '')} {e.name}" for e in environment.stats.entries.values()})
    results = []
    for rule in rules:
        merged = _merged(environment, rule.selector.describe(), rule.selector)
        figures = None if merged is None else slo.Figures.from_locust(merged, rule.limits)
        results.append(slo.judge(rule, figures, seen))
    return results


def _transport_rows(environment) -> list[dict]:
    rows = []
    for transport in slo.TRANSPORTS:
        merged = _merged(environment, f"all {transport}", slo.Selector(transport))
        if merged is not None:
            rows.append(summary.request_row(merged, transport, f"all {transport}"))
    return rows


@events.quitting.add_listener
def _slo_verdict(environment, **_kwargs):
    if isinstance(environment.runner, WorkerRunner):
        return  # the master (or the single process) judges the aggregate
    opts = environment.parsed_options
    limits = slo.SloLimits(p95_ms=opts.slo_p95_ms, p99_ms=opts.slo_p99_ms,
                           max_error_percent=opts.slo_error_percent, min_rps=opts.slo_min_rps)
    exceptions = sum(row["count"] for row in environment.runner.exceptions.values())
    verdict = slo.evaluate(limits, slo.Measured.from_locust(environment.stats.total, exceptions),
                           _judge_rules(environment))
    print(verdict.render(), file=sys.stderr, flush=True)
    if opts.verdict_file:
        slo.write_verdict(Path(opts.verdict_file), verdict, summary.final_requests(environment.stats),
                          _transport_rows(environment))
    environment.process_exit_code = 0 if verdict.passed else 1
