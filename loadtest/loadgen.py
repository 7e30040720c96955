"""The benchmark's load generator: several processes of grpc.aio clients, closed loop (or paced).

A Python client can saturate its own core before the server saturates (one grpc.aio process
manages roughly 2,000-3,000 trivial calls per second), and then the benchmark measures the client.
So the calls in flight are spread over `processes` worker processes, each an asyncio loop with its
share of concurrent callers, and the bench checks the generator against a trivial endpoint
(`health`) to show it reaches more than the system under test.

Measurement: every worker waits for a common wall-clock start, runs `warmup_s` unrecorded, then
counts the calls that complete within the next `seconds` and records their latencies and its own
CPU time. Requests are built before the clock starts, so the loop only sends. A workload with
`calls_per_s` has each caller wait out its share of that rate after an answer (the same call rate
as another series, to compare CPU per call at equal load). `Probe`s given to
`measure` look at other processes over the same window (the bench uses them for the servers' CPU
time and the gateway's metrics).

Worker processes speak the TF Serving API through the gateway's wire-compatible subset
(gateway/wire.py) and never import TensorFlow, so they stay small and start fast.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Literal, Protocol, Sequence

Kind = Literal["classify", "predict_bytes", "predict_pixels", "health"]
START_MARGIN_S = 0.5  # time for every worker to receive its task before the common start
MAX_MESSAGE_BYTES = 64 * 2**20
LOADGEN_CPU = "load generator"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q` quantile (0 < q < 1, to 0.001) of `values`, interpolated; None when there are none."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


@dataclass(frozen=True)
class Workload:
    """What the callers send; plain data, so it crosses to the worker processes."""

    kind: Kind
    target: str  # HOST:PORT
    payloads: tuple[bytes, ...] = ()  # encoded images, or raw uint8 pixel rows for predict_pixels
    model: str = ""
    batch: int = 1  # images per call (predict_*)
    input_shape: tuple[int, int, int] = (0, 0, 0)  # H, W, C of a pixel row (predict_pixels)
    signature: str = ""  # predict_*: the signature name
    input_name: str = ""  # predict_*: the signature's input
    output_filter: tuple[str, ...] = ()  # predict_*: outputs to ask for (all when empty)
    timeout_s: float = 30.0
    calls_per_s: float = 0.0  # > 0: the callers pace their calls to about this many a second in all;
    #                           0: each sends its next call as soon as the last is answered


@dataclass
class Sample:
    """One measurement: a workload at one concurrency."""

    series: str
    concurrency: int
    processes: int
    seconds: float
    images_per_call: int
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process -> CPU time in the window
    gateway_metrics: dict[str, float] = field(default_factory=dict)  # from its /metrics: mean batch, stages

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.calls_per_s * self.images_per_call

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def cpu_ms_per_image(self, process: str) -> float:
        images = self.calls * self.images_per_call
        if not images or process not in self.cpu_seconds:
            return float("nan")
        return 1000.0 * self.cpu_seconds[process] / images

    def percentile_ms(self, q: float) -> float:
        """NaN when no call completed (the report shows it as `–`)."""
        value = percentile(self.latencies_ms, q)
        return float("nan") if value is None else value


def _requests(work: Workload) -> list:
    """The messages to send, cycled by the callers (several, so caches see different images)."""
    if work.kind == "health":
        from grpc_health.v1 import health_pb2

        return [health_pb2.HealthCheckRequest(service="")]
    if work.kind == "classify":
        from imgclass_client.proto.classifier.v1 import classifier_pb2

        return [classifier_pb2.ClassifyRequest(model=work.model, image=p) for p in work.payloads]
    from gateway import tensors
    from gateway.wire import apis

    out = []
    for i in range(len(work.payloads)):
        chosen = [work.payloads[(i + j) % len(work.payloads)] for j in range(work.batch)]
        if work.kind == "predict_bytes":
            tensor = tensors.string_tensor(chosen)
        else:
            tensor = tensors.uint8_tensor(b"".join(chosen), [work.batch, *work.input_shape])
        request = apis.PredictRequest(inputs={work.input_name: tensor}, output_filter=work.output_filter)
        request.model_spec.name = work.model
        request.model_spec.signature_name = work.signature
        out.append(request)
    return out


def _method(work: Workload, channel):
    if work.kind == "health":
        from grpc_health.v1 import health_pb2_grpc

        return health_pb2_grpc.HealthStub(channel).Check
    if work.kind == "classify":
        from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc

        return classifier_pb2_grpc.ClassifierStub(channel).Classify
    from gateway.wire import PredictionServiceStub

    return PredictionServiceStub(channel).Predict


async def _drive(work: Workload, callers: int, start_at: float, warmup_s: float, seconds: float):
    import grpc

    requests = _requests(work)
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()
    completed = 0
    cpu: list[float] = []
    opts = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    async with grpc.aio.insecure_channel(work.target, options=opts) as channel:
        call = _method(work, channel)
        await channel.channel_ready()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        begin = time.perf_counter() + warmup_s
        end = begin + seconds
        interval = callers / work.calls_per_s if work.calls_per_s > 0 else 0.0  # each caller's pace

        async def caller(offset: int) -> None:
            nonlocal completed
            i = offset
            if interval:
                await asyncio.sleep(interval * offset / callers)  # staggered, not in step
            while (t0 := time.perf_counter()) < end:
                request = requests[i % len(requests)]
                i += 1
                try:
                    await call(request, timeout=work.timeout_s)
                    ok = True
                except grpc.aio.AioRpcError as exc:
                    ok = False
                    code = exc.code().name
                t1 = time.perf_counter()
                if begin <= t1 <= end:
                    if ok:
                        completed += 1
                        latencies.append((t1 - t0) * 1000.0)
                    else:
                        errors[code] += 1
                if interval:
                    await asyncio.sleep(max(0.0, t0 + interval - time.perf_counter()))

        async def cpu_meter() -> None:
            """This process's CPU time over the measured window: the generator's own cost."""
            await asyncio.sleep(max(0.0, begin - time.perf_counter()))
            start = time.process_time()
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            cpu.append(time.process_time() - start)

        await asyncio.gather(cpu_meter(), *(caller(k) for k in range(callers)))
    return completed, latencies, dict(errors), cpu[0]


def _worker(work: Workload, callers: int, start_at: float, warmup_s: float, seconds: float):
    return asyncio.run(_drive(work, callers, start_at, warmup_s, seconds))


def _import_clients() -> None:
    """Pool initializer: pay the import cost before any measurement starts."""
    import grpc  # noqa: F401
    from grpc_health.v1 import health_pb2_grpc  # noqa: F401
    from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc  # noqa: F401
    from gateway import tensors  # noqa: F401
    from gateway.wire import PredictionServiceStub  # noqa: F401


def _pid() -> int:
    import os

    time.sleep(0.2)  # keep this worker busy so the next task goes to another one
    return os.getpid()


def split(concurrency: int, processes: int) -> list[int]:
    """Callers per process: `concurrency` spread as evenly as possible over at most `processes`."""
    used = min(concurrency, processes)
    return [concurrency // used + (1 if k < concurrency % used else 0) for k in range(used)]


class Probe(Protocol):
    """Something measured over the same window as the calls (a server's CPU time, its metrics)."""

    def begin(self) -> None: ...

    def end(self) -> None: ...

    def record(self, sample: "Sample") -> None: ...


@contextlib.contextmanager
def probing(probes: Sequence[Probe]) -> Iterator[None]:
    """Begin the probes, in order, around the block; end every one begun, in order, also when a
    begin, the block or another end fails (a py-spy must never outlive its window). Raises the
    first failure."""
    begun: list[Probe] = []
    try:
        for probe in probes:
            begun.append(probe)  # ended even if its begin fails half-way
            probe.begin()
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # the failure to report is the first one
            _end(begun)
        raise
    _end(begun)


def _end(probes: Sequence[Probe]) -> None:
    """End every probe; the first failure is raised once all have been ended."""
    failure: Exception | None = None
    for probe in probes:
        try:
            probe.end()
        except Exception as exc:  # noqa: BLE001 - raised below, after the other probes have ended
            failure = failure or exc
    if failure is not None:
        raise failure


def _sleep_until(wall_clock: float) -> None:
    time.sleep(max(0.0, wall_clock - time.time()))


class LoadGenerator:
    """A pool of `processes` client processes, started once and reused for every measurement."""

    def __init__(self, processes: int, warmup_s: float = 1.0, seconds: float = 3.0):
        self.processes = processes
        self.warmup_s = warmup_s
        self.seconds = seconds
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "LoadGenerator":
        self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_import_clients)
        # Start every worker (and its imports) now, not during the first measurement.
        for future in [self._pool.submit(_pid) for _ in range(self.processes)]:
            future.result()
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def measure(self, series: str, work: Workload, concurrency: int, probes: Sequence[Probe] = ()) -> Sample:
        """`concurrency` callers for warmup + seconds; `probes` watch the measured window."""
        assert self._pool is not None, "use LoadGenerator as a context manager"
        shares = split(concurrency, self.processes)
        start_at = time.time() + START_MARGIN_S
        futures = [self._pool.submit(_worker, dataclasses.replace(work, calls_per_s=work.calls_per_s * n / concurrency),
                                     n, start_at, self.warmup_s, self.seconds) for n in shares]
        _sleep_until(start_at + self.warmup_s)
        with probing(probes):
            _sleep_until(start_at + self.warmup_s + self.seconds)
        per_call = work.batch if work.kind.startswith("predict") else 1
        sample = Sample(series, concurrency, len(shares), self.seconds, per_call)
        errors: collections.Counter = collections.Counter()
        for future in futures:
            completed, latencies, errs, cpu = future.result()
            sample.calls += completed
            sample.latencies_ms.extend(latencies)
            errors.update(errs)
            sample.cpu_seconds[LOADGEN_CPU] = sample.cpu_seconds.get(LOADGEN_CPU, 0.0) + cpu
        sample.errors = dict(errors)
        for probe in probes:
            probe.record(sample)
        return sample
