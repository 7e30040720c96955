"""The benchmark's two-caller series: a quiet caller next to a flood, fair queueing on and off.

Two gateways in front of the bench's model server, one with `fair_queueing` on (the default), one
with it off (one first-come queue per model), both with `max_concurrent_batches: 1` - what the
local model server runs at once - so calls queue in the gateway, where fairness applies, rather
than inside the model server. Against each, back to back: the quiet caller alone
(one `Classify` at a time, `x-client-id: quiet`), the flood alone (`FLOOD_IN_FLIGHT` calls in
flight from a process of its own, loadtest/flood.py, `x-client-id: flood`), then both together.
Goals, both always in the report: next to the flood, the quiet caller's p50 stays within
`QUIET_GOAL` times its p50 alone and it is never refused (fair queueing on; no answer at all
misses the goal); the flood alone loses at most 5 % of its throughput to fair queueing (a refused
flood call misses it too). A goal is `not measured` only when its reference (the quiet caller
alone; the flood alone with fair queueing off) has no answer. Every flood process is stopped on
the way out, also when a phase fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from imgclass_client.proto.classifier.v1 import classifier_pb2 as pb
from imgclass_client.proto.classifier.v1 import classifier_pb2_grpc as pb_grpc
from loadtest.bench_report import Goal
from loadtest.loadgen import percentile
from tools import stack

ROOT = Path(__file__).resolve().parent.parent
FLOOD_IN_FLIGHT = 256
QUIET_GOAL = 10.0       # quiet p50 next to the flood / quiet p50 alone, fair queueing on
FLOOD_GOAL = 0.95       # flood alone, images/s, fair queueing on / off
MODES = {"fair queueing on": "true", "fair queueing off": "false"}


@dataclass
class CallerFigures:
    answers: int = 0
    seconds: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.answers / self.seconds if self.seconds else 0.0


@dataclass
class FairnessResult:
    # mode -> phase ("quiet alone", "flood alone", "quiet with flood", "flood with quiet") -> figures
    figures: dict[str, dict[str, CallerFigures]] = field(default_factory=dict)

    def get(self, mode: str, phase: str) -> CallerFigures | None:
        return self.figures.get(mode, {}).get(phase)


def quiet(target: str, image: bytes, seconds: float) -> CallerFigures:
    """One call at a time as caller `quiet`."""
    out, latencies = CallerFigures(seconds=seconds), []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                stub.Classify(pb.ClassifyRequest(image=image), timeout=30, metadata=(("x-client-id", "quiet"),))
            except grpc.RpcError as err:
                out.refused[err.code().name] = out.refused.get(err.code().name, 0) + 1
                continue
            latencies.append((time.monotonic() - started) * 1000)
    out.answers = len(latencies)
    out.p50_ms, out.p99_ms = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return out


def start_flood(target: str, image_file: Path, seconds: float, stop: contextlib.ExitStack) -> subprocess.Popen:
    """The flood's process, registered with `stop` so it never outlives the block (a timeout, a
    failed call)."""
    process = subprocess.Popen([sys.executable, "-m", "loadtest.flood", target, str(image_file), str(seconds),
                                str(FLOOD_IN_FLIGHT), "flood"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    stop.callback(_kill, process)
    return process


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def flood_figures(process: subprocess.Popen, seconds: float) -> CallerFigures:
    out, _ = process.communicate(timeout=seconds + 60)
    data = json.loads(out.strip().splitlines()[-1])
    return CallerFigures(data["answers"], seconds, data["p50_ms"], data["p99_ms"], data["refused"])


def measure(model_server_target: str, image_file: Path, seconds: float, report_dir: Path, echo: bool,
            progress) -> FairnessResult:
    result = FairnessResult()
    image = image_file.read_bytes()
    for k, (mode, flag) in enumerate(MODES.items(), start=1):
        with contextlib.ExitStack() as stop:
            gw = stack.start_gateway(backend=model_server_target, env={**os.environ, "GATEWAY_FAIR_QUEUEING": flag},
                                     extra_args=["--max-concurrent-batches=1"], echo=echo,
                                     log_path=report_dir / f"gateway-fairness-{k}.log")
            stop.callback(gw.process.stop)
            quiet(gw.grpc_target, image, 0.5)  # warm up, the model server too (the first mode would pay it)
            flood_figures(start_flood(gw.grpc_target, image_file, 1.0, stop), 1.0)
            figures = result.figures[mode] = {}
            progress(f"{mode}: the quiet caller alone ...")
            figures["quiet alone"] = quiet(gw.grpc_target, image, seconds)
            progress(f"{mode}: the flood alone ({FLOOD_IN_FLIGHT} in flight) ...")
            figures["flood alone"] = flood_figures(start_flood(gw.grpc_target, image_file, seconds, stop), seconds)
            progress(f"{mode}: both together ...")
            flood = start_flood(gw.grpc_target, image_file, seconds + 2, stop)
            time.sleep(1.0)  # the flood's process starts and fills the queue before the quiet caller is timed
            figures["quiet with flood"] = quiet(gw.grpc_target, image, seconds)
            figures["flood with quiet"] = flood_figures(flood, seconds + 2)
    return result


QUIET_NAME = f"quiet caller's p50 next to a flood of {FLOOD_IN_FLIGHT} in flight vs alone, fair queueing on"
QUIET_TARGET = f"≤ {QUIET_GOAL:g}×, never refused"
FLOOD_NAME = "the flood alone, images/s: fair queueing on vs off"
FLOOD_TARGET = f"≥ {FLOOD_GOAL}×"


def _refused(f: CallerFigures | None) -> int:
    return sum(f.refused.values()) if f else 0


def quiet_goal(r: FairnessResult | None) -> Goal:
    """Not measured only when the quiet caller alone was not; no answer next to the flood misses."""
    alone, crowded = r and r.get("fair queueing on", "quiet alone"), r and r.get("fair queueing on", "quiet with flood")
    if not alone or alone.p50_ms is None:
        why = "not measured" if not alone else f"the quiet caller alone got no answer, refused {_refused(alone)}"
        return Goal(QUIET_NAME, f"n/a ({why})", QUIET_TARGET, None)
    refused = _refused(crowded)
    if not crowded or crowded.p50_ms is None:
        return Goal(QUIET_NAME, f"no answer next to the flood (alone {alone.p50_ms:.1f} ms); quiet refused {refused}",
                    QUIET_TARGET, False)
    ratio = crowded.p50_ms / alone.p50_ms
    off = r.get("fair queueing off", "quiet with flood")
    contrast = f"; {off.p50_ms:.1f} ms with fair queueing off" if off and off.p50_ms else ""
    return Goal(QUIET_NAME, f"{ratio:.1f}× ({crowded.p50_ms:.1f} vs {alone.p50_ms:.1f} ms{contrast}); "
                            f"quiet refused {refused}",
                QUIET_TARGET, ratio <= QUIET_GOAL and not refused)


def flood_goal(r: FairnessResult | None) -> Goal:
    """Not measured only when the flood alone with fair queueing off (the reference) got nothing."""
    on, off = r and r.get("fair queueing on", "flood alone"), r and r.get("fair queueing off", "flood alone")
    if not off or not off.per_s:
        why = ("not measured" if not off else
               f"the flood alone with fair queueing off got no answer, refused {_refused(off)}")
        return Goal(FLOOD_NAME, f"n/a ({why})", FLOOD_TARGET, None)
    rate = on.per_s if on else 0.0
    ratio = rate / off.per_s
    refused = _refused(on) + _refused(off)
    errors = f" ({refused:,} errors)" if refused else ""
    return Goal(FLOOD_NAME, f"{ratio:.2f}× ({rate:,.0f} vs {off.per_s:,.0f}){errors}", FLOOD_TARGET,
                ratio >= FLOOD_GOAL and not refused)


def goals(r: FairnessResult | None) -> list[Goal]:
    """Both goals always: a caller that got no answer misses its goal rather than leaving it out."""
    return [quiet_goal(r), flood_goal(r)]


def markdown(r: FairnessResult | None) -> list[str]:
    if r is None:
        return []
    lines = ["## Two callers: a quiet one next to a flood", "",
             f"A quiet caller (one call at a time) and a flood ({FLOOD_IN_FLIGHT} in flight, its own process), "
             "alone and together, against a gateway with fair queueing on and one with it off.", "",
             "| gateway | phase | answers/s | p50 ms | p99 ms | refused |", "|---|---|---:|---:|---:|---|"]
    for mode, phases in r.figures.items():
        for phase, f in phases.items():
            p50 = "–" if f.p50_ms is None else f"{f.p50_ms:.1f}"
            p99 = "–" if f.p99_ms is None else f"{f.p99_ms:.1f}"
            refused = ", ".join(f"{code} {n}" for code, n in sorted(f.refused.items())) or "0"
            lines.append(f"| {mode} | {phase} | {f.per_s:,.0f} | {p50} | {p99} | {refused} |")
    return lines + [""]
