"""`python -m loadtest.bench` (`make bench`): the side-by-side benchmark, one run, one machine.

Starts one model server on the default model and three gateways in front of it (`GATEWAYS`, each
with its batching settings pinned here, so a change of the gateway's defaults does not move the
baseline: micro-batching on, GATEWAY_MAX_BATCH_SIZE=32 GATEWAY_MAX_WAIT_MS=2; off,
GATEWAY_MAX_BATCH_SIZE=1; and off with the cap on Predict calls in flight lifted), then measures,
with the same small example images throughout:

* a concurrency sweep (closed loop, `--concurrency` levels) of five ways to classify an image:
  Predict straight to the model server (encoded image to the `image_bytes` signature; raw uint8
  pixels to `serving_default`) and Classify through each gateway;
* the load generator against a trivial endpoint (the gateway's gRPC health Check), which must
  reach more calls per second than any system figure, or the generator was the bottleneck; and the
  same Check paced to the batching gateway's calls/s at the headline level (a gRPC call costs the
  server less CPU the more calls share a wake-up: the gateway's CPU per image is also compared with
  the Check at equal load);
* the model server's Predict at batch 32 against the same signature called in-process
  (loadtest/inprocess.py, its own process because it imports TensorFlow);
* request bytes: uint8 `tensor_content` against float32 values, one image and a batch of 32;
* decode+resize of a 640x480 JPEG to the model's input on one core, with the gateway's decoder
  (gateway/decode.py: Pillow with JPEG draft mode);
* the gateways' resident memory before and after the sweep;
* with `--profile` (`make bench PROFILE=1`), py-spy on the batching gateway during its headline
  point (loadtest/profile.py): a flame graph and the top 20 functions by CPU;
* real photos (loadtest/bench_photos.py): 12 MP and 640x480 JPEGs, whole and shrunk by the client,
  decode scaling over threads, the gateway's memory after a burst of photos;
* two model-server replicas behind one gateway (loadtest/bench_fleet.py): per-endpoint routing
  against one round_robin channel;
* two callers (loadtest/bench_fairness.py): a quiet one next to a flood of 256 in flight, with the
  gateway's fair queueing on and off.

Writes `reports/bench/<timestamp>/`: report.md (goals, tables, CPU per image, machine),
samples.csv, goals.csv, bench.png (throughput and p50/p99 latency against concurrency), the
profile (profile.svg, profile-stacks.txt) and the servers' logs; a reused `--report-dir` first
loses those files of the previous run (`OUTPUTS`), nothing else. Numbers go in the report only:
nothing here asserts on them. With `--baseline`, the run is compared with an earlier one
(loadtest/bench_baseline.py) and exits 1 on a regression.

The optional parts (in-process call, real photos, two replicas, two callers) never cost the run:
one that fails leaves a note in the report and its goals `not measured`. When the main stack or
the sweep fails, the report is still written with whatever was measured, and the exit code is 1.

This process speaks TF Serving's API through the gateway's wire subset, so it must never import
TensorFlow (see tests/conftest.py); the in-process measurement runs as a child process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import grpc
import psutil
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from gateway import tensors
from gateway.backend import SIGNATURE, parse_signature
from gateway.decode import DecodeLimits, InputSpec, decode_image
from gateway.errors import GatewayError
from gateway.wire import PredictionServiceStub, apis
from gateway.wire import tensor as tensor_pb2
from loadtest import bench_baseline, bench_fairness, bench_fleet, bench_photos, bench_report, compare, machine
from loadtest.bench_report import (BATCH, CPU_GATEWAY, CPU_MODEL_SERVER, SERIES_BATCH, SERIES_DIRECT_BYTES,
                                   SERIES_DIRECT_PIXELS, SERIES_GATEWAY_OFF, SERIES_GATEWAY_OFF_WIDE,
                                   SERIES_GATEWAY_ON, SERIES_TRIVIAL, SERIES_TRIVIAL_PACED,
                                   DecodeRate)
from loadtest.images import ImagePool, synthetic_photo
from loadtest.loadgen import LoadGenerator, Sample, Workload
from loadtest.probes import ProcessCpu
from loadtest.profile import Profiler, py_spy
from tools import stack

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports" / "bench"
IMAGE_BYTES_SIGNATURE = "image_bytes"
SCORES = "scores"
DECODE_SIZE = (640, 480)
PARTS = ("photos", "replicas", "callers")  # what --skip can leave out
# What a run writes into its report folder; a reused --report-dir loses these first, so nothing in
# it can be mistaken for this run's (the servers append to their logs).
OUTPUTS = ("report.md", "samples.csv", "goals.csv", "bench.png", "profile.svg", "profile-stacks.txt",
           "serving*.log", "gateway-*.log")
T = TypeVar("T")
# The gateways compared, by series: the environment each runs with, on top of this process's.
# Batching off is measured twice: with the default cap of Predict calls in flight (so only that
# many images are at the model server at once), and with the cap lifted, which is what batching
# must really beat: the same concurrency sent as single-image calls.
GATEWAYS = {
    SERIES_GATEWAY_ON: {"GATEWAY_MAX_BATCH_SIZE": "32", "GATEWAY_MAX_WAIT_MS": "2"},
    SERIES_GATEWAY_OFF: {"GATEWAY_MAX_BATCH_SIZE": "1", "GATEWAY_MAX_WAIT_MS": "0"},
    SERIES_GATEWAY_OFF_WIDE: {"GATEWAY_MAX_BATCH_SIZE": "1", "GATEWAY_MAX_WAIT_MS": "0",
                              "GATEWAY_MAX_CONCURRENT_BATCHES": "64"},
}


@dataclass(frozen=True)
class ModelFacts:
    name: str
    version: int
    input_name: str
    spec: InputSpec
    image_bytes_input: str | None  # the `image_bytes` signature's input, when the model has one

    def describe(self) -> str:
        s = self.spec
        extra = "an" if self.image_bytes_input else "no"
        return (f"{self.name} v{self.version}: `{SIGNATURE}` input `{self.input_name}` uint8 "
                f"[N,{s.height},{s.width},{s.channels}]; {extra} `{IMAGE_BYTES_SIGNATURE}` signature")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description="Side-by-side benchmark of the stack; writes reports/bench/<timestamp>/ "
                    "(report.md, samples.csv, goals.csv, bench.png).")
    parser.add_argument("--concurrency", default="1,4,16,32,64", metavar="LIST",
                        help="comma-separated calls in flight for the sweep (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="measured seconds per point (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=1.0, metavar="SECONDS",
                        help="unmeasured seconds before each point (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="load-generator processes (default: the number of cores, %(default)s)")
    parser.add_argument("--models-dir", type=Path, default=stack.DEFAULT_MODELS_DIR, metavar="DIR",
                        help="models directory; its default model `fashion` is served (default: models)")
    parser.add_argument("--report-dir", type=Path, default=None, metavar="DIR",
                        help="where to write the report (default: reports/bench/<timestamp>)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the batching gateway with py-spy during its headline point (flame graph and "
                             "top 20 functions in the report; make bench PROFILE=1)")
    parser.add_argument("--skip", default="", metavar="LIST",
                        help=f"comma-separated parts to leave out: {', '.join(PARTS)} (default: none)")
    parser.add_argument("--verbose", action="store_true", help="echo the servers' logs")
    compare.add_arguments(parser, what="a bench report folder or its samples.csv", ms_default=2.0)
    args = parser.parse_args(argv)
    try:  # before the servers start: a bad baseline must not cost a whole run
        compare.tolerance_of(args)
        if args.baseline:
            bench_baseline.check(args.baseline)
    except (ValueError, bench_baseline.BaselineError) as exc:
        parser.error(str(exc))
    args.skip = {v.strip() for v in args.skip.split(",") if v.strip()}
    if args.skip - set(PARTS):
        parser.error(f"--skip: unknown parts {sorted(args.skip - set(PARTS))}; known: {', '.join(PARTS)}")
    if args.profile and py_spy() is None:
        parser.error("--profile needs py-spy (pip install -e '.[dev]' installs it)")
    try:
        args.levels = sorted({int(v) for v in args.concurrency.split(",") if v.strip()})
    except ValueError:
        parser.error(f"--concurrency: expected comma-separated integers, got {args.concurrency!r}")
    if not args.levels or args.levels[0] < 1 or args.seconds <= 0 or args.warmup < 0 or args.processes < 1:
        parser.error("--concurrency levels and --processes must be >= 1, --seconds > 0, --warmup >= 0")
    return args


def model_facts(target: str, name: str) -> ModelFacts:
    """What the model server says about the model (GetModelMetadata), read as the gateway reads it."""
    request = apis.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    with grpc.insecure_channel(target) as channel:
        response = PredictionServiceStub(channel).GetModelMetadata(request, timeout=30)
    signature = parse_signature(name, response)
    signatures = apis.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    image_bytes = signatures.signature_def.get(IMAGE_BYTES_SIGNATURE)
    image_bytes_input = next(iter(image_bytes.inputs), None) if image_bytes is not None else None
    return ModelFacts(name, signature.version, signature.input_name, signature.input, image_bytes_input)


def photo_640x480() -> tuple[bytes, str]:
    """A 640x480 JPEG: an example photo of that size, else a larger one scaled down, else synthetic."""
    jpegs = [p for p in stack.example_images() if p.suffix.lower() in (".jpg", ".jpeg")]
    for path in jpegs:
        with Image.open(path) as img:
            if img.size == DECODE_SIZE:
                return path.read_bytes(), f"examples/{path.relative_to(stack.EXAMPLES_DIR)}"
    for path in jpegs:
        with Image.open(path) as img:
            if img.width * img.height > DECODE_SIZE[0] * DECODE_SIZE[1]:
                buf = io.BytesIO()
                img.convert("RGB").resize(DECODE_SIZE).save(buf, "JPEG", quality=90)
                return buf.getvalue(), f"examples/{path.relative_to(stack.EXAMPLES_DIR)} scaled to 640x480"
    return synthetic_photo(*DECODE_SIZE), "a synthetic 640x480 photo"


def decode_rate(jpeg: bytes, source: str, spec: InputSpec, seconds: float, rounds: int = 3) -> DecodeRate:
    """gateway.decode.decode_image in a loop on this one thread; the best of `rounds` rounds, as
    timeit reports, since other work on a shared machine only ever slows a round down."""
    limits = DecodeLimits()
    for _ in range(10):
        decode_image(jpeg, spec, limits)
    results = []
    for _ in range(rounds):
        count = 0
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        while time.perf_counter() - wall0 < seconds / rounds:
            decode_image(jpeg, spec, limits)
            count += 1
        results.append(DecodeRate(count, time.perf_counter() - wall0, time.thread_time() - cpu0, source))
    return max(results, key=lambda r: r.per_core)


def request_bytes(facts: ModelFacts, pixels: bytes, batch: int) -> dict[str, int]:
    """Serialized PredictRequest sizes for `batch` images: uint8 tensor_content vs float32 values
    (everything else equal), and the raw pixel bytes they carry."""
    rows = (pixels * batch)[: facts.spec.nbytes * batch]
    shape = [batch, facts.spec.height, facts.spec.width, facts.spec.channels]

    def size(tensor: tensor_pb2.TensorProto) -> int:
        request = apis.PredictRequest(inputs={facts.input_name: tensor})
        request.model_spec.name = facts.name
        request.model_spec.signature_name = SIGNATURE
        return request.ByteSize()

    as_floats = tensor_pb2.TensorProto(dtype=tensors.DT_FLOAT, float_val=[float(v) for v in rows])
    for dim in shape:
        as_floats.tensor_shape.dim.add(size=dim)
    return {"uint8": size(tensors.uint8_tensor(rows, shape)), "float32": size(as_floats), "pixels": len(rows)}


def inprocess_rate(model_dir: Path, facts: ModelFacts, pixels: bytes, seconds: float, workdir: Path) -> dict:
    """The signature called in-process at batch BATCH, in a child process (it imports TensorFlow)."""
    rows_file = workdir / "inprocess-pixels.bin"
    rows_file.write_bytes(pixels)
    s = facts.spec
    cmd = [sys.executable, "-m", "loadtest.inprocess", "--model-dir", str(model_dir), "--input", facts.input_name,
           "--pixels", str(rows_file), "--shape", f"{s.height},{s.width},{s.channels}",
           "--batch", str(BATCH), "--seconds", str(seconds)]
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    finally:
        rows_file.unlink(missing_ok=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


class GatewayMetrics:
    """Probe: the gateway's own account of the window, from its /metrics: images per Predict
    call and the mean time per image in each stage (decode, queue_wait, predict, decide)."""

    def __init__(self, http_url: str):
        self._url = http_url + "/metrics"
        self._start: dict[str, float] = {}
        self._stop: dict[str, float] = {}

    def _scrape(self) -> dict[str, float]:
        with urllib.request.urlopen(self._url, timeout=10) as resp:
            text = resp.read().decode("utf-8")
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in ("gateway_batch_size_sum", "gateway_batch_size_count"):
                    key = s.name
                elif s.name.startswith("gateway_stage_duration_seconds_") and s.name[-4:] in ("_sum", "ount"):
                    key = f"{s.labels['stage']}{s.name[len('gateway_stage_duration_seconds'):]}"
                else:
                    continue
                totals[key] = totals.get(key, 0.0) + s.value
        return totals

    def begin(self) -> None:
        self._start = self._scrape()

    def end(self) -> None:
        self._stop = self._scrape()

    def record(self, sample: Sample) -> None:
        def delta(key: str) -> float:
            return self._stop.get(key, 0.0) - self._start.get(key, 0.0)

        if delta("gateway_batch_size_count"):
            sample.gateway_metrics[bench_report.MEAN_BATCH] = (delta("gateway_batch_size_sum")
                                                               / delta("gateway_batch_size_count"))
        for key in self._stop:
            if key.endswith("_count") and not key.startswith("gateway_") and delta(key):
                stage = key[: -len("_count")]
                sample.gateway_metrics[f"{stage} ms"] = 1000.0 * delta(f"{stage}_sum") / delta(key)


@contextlib.contextmanager
def bench_stack(args: argparse.Namespace,
                report_dir: Path) -> Iterator[tuple[stack.ModelServer, dict[str, stack.Gateway]]]:
    """One model server and the GATEWAYS in front of it; all stopped on the way out."""
    with contextlib.ExitStack() as stop:
        server = stack.start_model_server(model_base_path=args.models_dir / stack.DEFAULT_MODEL, echo=args.verbose,
                                          log_path=report_dir / "serving.log")
        stop.callback(server.process.stop)
        gateways = {}
        for k, (series, env) in enumerate(GATEWAYS.items(), start=1):
            gw = stack.start_gateway(backend=server.grpc_target, env=os.environ | env, echo=args.verbose,
                                     log_path=report_dir / f"gateway-{k}.log")
            stop.callback(gw.process.stop)
            gateways[series] = gw
        yield server, gateways


def stop_gateways_and_server(server: stack.ModelServer, gateways: dict[str, stack.Gateway]) -> None:
    """Frees the cores (and memory) for the next stack; bench_stack's own stops are then no-ops."""
    for gw in gateways.values():
        gw.process.stop()
    server.process.stop()


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pixel_workload(server: stack.ModelServer, facts: ModelFacts, pixels: list[bytes], batch: int = 1) -> Workload:
    """Predict on `serving_default` with uint8 rows decoded by the client."""
    return Workload("predict_pixels", server.grpc_target, tuple(pixels), facts.name, batch=batch,
                    input_shape=(facts.spec.height, facts.spec.width, facts.spec.channels),
                    signature=SIGNATURE, input_name=facts.input_name, output_filter=(SCORES,))


def sweep_plan(server: stack.ModelServer, gateways: dict[str, stack.Gateway], facts: ModelFacts,
               images: list[bytes], pixels: list[bytes]) -> list[tuple[str, Workload, list]]:
    """(series, workload, probes) for every line of the sweep, the direct baselines first."""
    server_cpu = ProcessCpu(CPU_MODEL_SERVER, server.process.proc.pid)
    plan: list[tuple[str, Workload, list]] = []
    if facts.image_bytes_input:
        plan.append((SERIES_DIRECT_BYTES, Workload(
            "predict_bytes", server.grpc_target, tuple(images), facts.name, signature=IMAGE_BYTES_SIGNATURE,
            input_name=facts.image_bytes_input, output_filter=(SCORES,)), [server_cpu]))
    plan.append((SERIES_DIRECT_PIXELS, pixel_workload(server, facts, pixels), [server_cpu]))
    for series, gw in gateways.items():
        plan.append((series, Workload("classify", gw.grpc_target, tuple(images)),
                     [ProcessCpu(CPU_GATEWAY, gw.process.proc.pid), server_cpu, GatewayMetrics(gw.http_url)]))
    return plan


def measure_without_load(result: bench_report.BenchResult, args: argparse.Namespace, facts: ModelFacts,
                         pixels: list[bytes], report_dir: Path) -> None:
    """Decode speed, request sizes and the in-process model: no servers involved."""
    progress("decode+resize of a 640x480 JPEG on one core ...")
    jpeg, source = photo_640x480()
    result.decode = decode_rate(jpeg, source, facts.spec, args.seconds)
    result.request_bytes = {1: request_bytes(facts, pixels[0], 1),
                            BATCH: request_bytes(facts, b"".join(pixels), BATCH)}
    progress(f"the signature in-process at batch {BATCH} (a TensorFlow child process) ...")
    model_dir = args.models_dir / facts.name / str(facts.version)
    result.inprocess = optional(result, "the in-process signature call", lambda: inprocess_rate(
        model_dir, facts, b"".join(pixels), args.seconds, report_dir)) or {"error": "it failed, see Notes"}


def measure_under_load(result: bench_report.BenchResult, args: argparse.Namespace, gen: LoadGenerator,
                       server: stack.ModelServer, gateways: dict[str, stack.Gateway], facts: ModelFacts,
                       images: list[bytes], pixels: list[bytes], report_dir: Path) -> None:
    """The trivial-endpoint check, the sweep (profiled at its headline point with --profile), the
    model server at batch 32, and the real photos."""
    gw_on = gateways[SERIES_GATEWAY_ON]
    progress(f"load generator on a trivial endpoint, {max(args.levels)} in flight ...")
    result.trivial = gen.measure(SERIES_TRIVIAL, Workload("health", gw_on.grpc_target), max(args.levels),
                                 [ProcessCpu(CPU_GATEWAY, gw_on.process.proc.pid)])
    plan = sweep_plan(server, gateways, facts, images, pixels)
    headline = bench_report.headline_level([Sample("", level, 0, 0, 0) for level in args.levels])
    if headline != max(args.levels):  # the CPU goal compares with the trivial call at the same level
        progress(f"the trivial endpoint again, {headline} in flight ...")
        result.trivial_headline = gen.measure(SERIES_TRIVIAL, Workload("health", gw_on.grpc_target), headline,
                                              [ProcessCpu(CPU_GATEWAY, gw_on.process.proc.pid)])
    for level in args.levels:  # every series at one level back to back: compared under the same
        for series, work, probes in plan:  # background load, on a machine others share
            profiled = args.profile and series == SERIES_GATEWAY_ON and level == headline
            if profiled:
                profiler = Profiler(CPU_GATEWAY, gw_on.process.proc.pid, report_dir)
                probes = [*probes, profiler]
                result.profile = profiler.profile
            progress(f"{series}: {level} in flight{' (profiled)' if profiled else ''} ...")
            result.samples.append(gen.measure(series, work, level, probes))
        on = next((s for s in result.samples[-len(plan):] if s.series == SERIES_GATEWAY_ON and s.calls), None)
        if level == headline and on is not None:  # the CPU goal's context: the Check at the same call rate
            progress(f"the trivial endpoint, {level} in flight, paced to {on.calls_per_s:,.0f} calls/s ...")
            result.trivial_paced = gen.measure(
                SERIES_TRIVIAL_PACED, Workload("health", gw_on.grpc_target, calls_per_s=on.calls_per_s), level,
                [ProcessCpu(CPU_GATEWAY, gw_on.process.proc.pid)])
    progress(f"model server Predict at batch {BATCH}, one call in flight ...")
    result.batch_server = gen.measure(SERIES_BATCH, pixel_workload(server, facts, pixels, BATCH), 1,
                                      [ProcessCpu(CPU_MODEL_SERVER, server.process.proc.pid)])
    result.rss_after = {name: rss_mib(gw.process.proc.pid) for name, gw in gateways.items()}
    if "photos" not in args.skip:
        result.photos = optional(result, "the real-photo series", lambda: bench_photos.measure(
            gen, gw_on.grpc_target, gw_on.process.proc.pid, server.process.proc.pid, facts.spec, images,
            args.seconds, result.machine.usable_cores, progress))


def optional(result: bench_report.BenchResult, part: str, measure: Callable[[], T]) -> T | None:
    """`measure()`, or None when it fails: an optional part's failure (a timeout, a server that
    went away, unreadable output) becomes a note in the report, its goals `not measured`, and the
    benchmark goes on."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - whatever broke, the rest of the report must not be lost
        progress(f"{part} failed, going on without it: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        result.notes.append(f"{part[0].upper()}{part[1:]}: not measured, it failed: "
                            f"{type(exc).__name__}: {exc}".rstrip(": "))
        return None


def new_result(args: argparse.Namespace) -> bench_report.BenchResult:
    result = bench_report.BenchResult(
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), machine=machine.describe(),
        settings={"concurrency levels": ", ".join(map(str, args.levels)),
                  "measured seconds per point": args.seconds, "warm-up seconds per point": args.warmup,
                  "load-generator processes": args.processes,
                  **{f"{series} (gateway-{k}.log)": " ".join(f"{name}={value}" for name, value in env.items())
                     for k, (series, env) in enumerate(GATEWAYS.items(), start=1)}})
    result.notes += [f"Skipped (`--skip`): {', '.join(sorted(args.skip))}; their goals are not measured."
                     ] if args.skip else []
    return result


def run(args: argparse.Namespace, report_dir: Path, result: bench_report.BenchResult) -> None:
    """Measure everything into `result`; what was measured stays there if this raises."""
    images = [img.data for img in ImagePool.from_examples(large_share=0.0).small]
    progress(f"starting the model server and {len(GATEWAYS)} gateways ...")
    with bench_stack(args, report_dir) as (server, gateways):
        facts = model_facts(server.grpc_target, stack.DEFAULT_MODEL)
        pixels = [decode_image(data, facts.spec, DecodeLimits()) for data in images]
        result.model = facts.describe()
        result.images = f"{len(images)} small example images, {sum(map(len, images)) // len(images):,} B average"
        if not facts.image_bytes_input:
            result.notes.append(f"The model has no `{IMAGE_BYTES_SIGNATURE}` signature: the direct baseline "
                                "is Predict with uint8 pixels decoded by the client.")
        result.rss_before = {name: rss_mib(gw.process.proc.pid) for name, gw in gateways.items()}
        measure_without_load(result, args, facts, pixels, report_dir)
        with LoadGenerator(args.processes, warmup_s=args.warmup, seconds=args.seconds) as gen:
            measure_under_load(result, args, gen, server, gateways, facts, images, pixels, report_dir)
            if "callers" not in args.skip:
                result.fairness = optional(result, "the two-caller series", lambda: bench_fairness.measure(
                    server.grpc_target, stack.EXAMPLES_DIR / "fashion" / "bag.png", args.seconds, report_dir,
                    args.verbose, progress))
            if "replicas" not in args.skip:
                stop_gateways_and_server(server, gateways)
                result.fleet = optional(result, "the two-replica series", lambda: bench_fleet.measure(
                    gen, args.models_dir, GATEWAYS[SERIES_GATEWAY_ON], images, report_dir, args.verbose, progress))


def failure(exc: Exception, report_dir: Path) -> str:
    """Why the benchmark stopped, in one line."""
    if isinstance(exc, grpc.RpcError):
        return f"the model server failed a call: {exc.code().name} {exc.details()}"
    if isinstance(exc, psutil.NoSuchProcess):
        return f"a server exited during the benchmark; see the logs in {report_dir}"
    if isinstance(exc, (stack.StackError, GatewayError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def clear_outputs(report_dir: Path) -> None:
    """A reused report folder loses the files a previous run wrote (OUTPUTS), nothing else."""
    for pattern in OUTPUTS:
        for path in report_dir.glob(pattern):
            path.unlink()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report_dir = (args.report_dir or REPORTS / time.strftime("%Y%m%d-%H%M%S")).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    clear_outputs(report_dir)
    result, code = new_result(args), 0
    try:
        run(args, report_dir, result)
    except Exception as exc:  # noqa: BLE001 - the report keeps what was measured before it
        if not isinstance(exc, (stack.StackError, GatewayError, grpc.RpcError, psutil.NoSuchProcess)):
            traceback.print_exc(file=sys.stderr)
        print(f"error: {failure(exc, report_dir)}", file=sys.stderr)
        result.notes.append(f"The benchmark stopped early: {failure(exc, report_dir)}. What it measured "
                            "before that is below; the rest is not measured.")
        code = 1
    result.finished = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result.load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    bench_report.write(result, report_dir)
    print((report_dir / "report.md").read_text(encoding="utf-8").split("\n## Sweep")[0])
    if args.baseline and code == 0:
        code = bench_baseline.report(report_dir, args)
    print(f"report: {report_dir}/report.md", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
