"""The benchmark's two-replica series: the gateway's per-endpoint routing against one round_robin channel.

Two `python -m serving` replicas of the default model on free ports, and two batching gateways in
front of both (`--backend=ipv4:127.0.0.1:A,127.0.0.1:B`, what a headless Service resolves to):
one with the default `backend_balancing: endpoints` (a channel per replica, each request to the
least loaded one that serves its version), one with `--backend-balancing=channel` (one gRPC
round_robin channel over both). `Classify` with the small example images at `CONCURRENCY` in
flight through each, back to back, several rounds alternating which goes first, so both see the
same background load. Goal: endpoints >= 0.95x channel, images/s.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.bench_report import CPU_GATEWAY, Goal, ratio
from loadtest.loadgen import LoadGenerator, Sample, Workload
from loadtest.probes import ProcessCpu
from tools import stack

CONCURRENCY = 32
ROUNDS = 2
GOAL = 0.95
SERIES_ENDPOINTS = "two replicas, per-endpoint routing"
SERIES_CHANNEL = "two replicas, one round_robin channel"
BALANCING = {SERIES_ENDPOINTS: "endpoints", SERIES_CHANNEL: "channel"}


@dataclass
class FleetResult:
    backend: str = ""
    samples: list[Sample] = field(default_factory=list)  # one per series, its rounds merged

    def rate(self, series: str) -> float | None:
        return next((s.images_per_s for s in self.samples if s.series == series and s.seconds), None)


def merged(rounds: list[Sample]) -> Sample:
    """One series' rounds as one sample: calls, seconds, errors, latencies and CPU added up."""
    first = rounds[0]
    out = Sample(first.series, first.concurrency, first.processes, 0.0, first.images_per_call)
    for s in rounds:
        out.seconds += s.seconds
        out.calls += s.calls
        out.latencies_ms += s.latencies_ms
        for code, n in s.errors.items():
            out.errors[code] = out.errors.get(code, 0) + n
        for process, cpu in s.cpu_seconds.items():
            out.cpu_seconds[process] = out.cpu_seconds.get(process, 0.0) + cpu
    return out


def measure(gen: LoadGenerator, models_dir: Path, gateway_env: dict[str, str], images: list[bytes],
            report_dir: Path, echo: bool, progress) -> FleetResult:
    result = FleetResult()
    with contextlib.ExitStack() as stop:
        progress("two replicas: starting two model servers and two gateways ...")
        servers = []
        for k in (1, 2):
            server = stack.start_model_server(model_base_path=models_dir / stack.DEFAULT_MODEL, echo=echo,
                                              log_path=report_dir / f"serving-replica-{k}.log")
            stop.callback(server.process.stop)
            servers.append(server)
        result.backend = "ipv4:" + ",".join(s.grpc_target for s in servers)
        gateways = {}
        for k, (series, balancing) in enumerate(BALANCING.items(), start=1):
            gw = stack.start_gateway(backend=result.backend, env=os.environ | gateway_env, echo=echo,
                                     extra_args=[f"--backend-balancing={balancing}"],
                                     log_path=report_dir / f"gateway-replicas-{k}.log")
            stop.callback(gw.process.stop)
            gateways[series] = gw
        order = list(gateways)
        rounds: dict[str, list[Sample]] = {series: [] for series in order}
        for round_ in range(ROUNDS):
            for series in order if round_ % 2 == 0 else order[::-1]:
                gw = gateways[series]
                progress(f"{series}: {CONCURRENCY} in flight (round {round_ + 1} of {ROUNDS}) ...")
                rounds[series].append(gen.measure(series, Workload("classify", gw.grpc_target, tuple(images)),
                                                  CONCURRENCY, [ProcessCpu(CPU_GATEWAY, gw.process.proc.pid)]))
        result.samples = [merged(rounds[series]) for series in order]
    return result


GOAL_NAME = (f"two model-server replicas, images/s at {CONCURRENCY} in flight: per-endpoint routing vs one "
             "round_robin channel")


def goals(r: FleetResult | None) -> list[Goal]:
    """The series' goal, `not measured` when the series was not."""
    samples = {s.series: s for s in (r.samples if r else ())}
    endpoints, channel = samples.get(SERIES_ENDPOINTS), samples.get(SERIES_CHANNEL)
    x = ratio(r and r.rate(SERIES_ENDPOINTS), r and r.rate(SERIES_CHANNEL))
    measured = ("n/a (not measured)" if r is None else "n/a" if x is None else
                f"{x:.2f}× ({endpoints.images_per_s:,.0f} vs {channel.images_per_s:,.0f})")
    return [Goal(GOAL_NAME, measured, f"≥ {GOAL}×", None if x is None else x >= GOAL
                 ).counting_errors(endpoints, channel)]


def markdown(r: FleetResult | None, table) -> list[str]:
    if r is None:
        return []
    return ["## Two model-server replicas", "",
            f"Two `python -m serving` replicas behind one batching gateway (`--backend={r.backend}`), "
            f"`backend_balancing: endpoints` (the default) against `--backend-balancing=channel`, "
            f"{ROUNDS} rounds alternating which goes first.", "", *table(r.samples), ""]
