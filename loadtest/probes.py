"""Probes the benchmark attaches to a measured window (loadtest/loadgen.py's `Probe`).

`ProcessCpu`: the CPU time (user + system) a server process spends in the window, recorded in the
sample under the process's name; the report divides it by the images answered.
"""

from __future__ import annotations

import psutil

from loadtest.loadgen import Sample


class ProcessCpu:
    """Probe: the CPU time a server process spends in the measured window."""

    def __init__(self, name: str, pid: int):
        self.name = name
        self._process = psutil.Process(pid)
        self._start = self._used = 0.0

    def _now(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    def begin(self) -> None:
        self._start = self._now()

    def end(self) -> None:
        self._used = self._now() - self._start

    def record(self, sample: Sample) -> None:
        sample.cpu_seconds[self.name] = self._used
