"""What machine a measurement ran on: load-test and benchmark figures mean nothing without it.

Also records the load average before the run: on a shared machine, other work competes for the
same cores, and a reader must be able to tell.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    logical_cores: int
    usable_cores: int
    ram_gib: float
    system: str
    python: str
    load_average: tuple[float, float, float] | None

    def markdown(self) -> str:
        load = ("n/a" if self.load_average is None
                else " / ".join(f"{v:.2f}" for v in self.load_average) + " (1 / 5 / 15 min)")
        return "\n".join([
            "| | |",
            "|---|---|",
            f"| CPU | {self.cpu_model} |",
            f"| cores | {self.logical_cores} logical, {self.usable_cores} usable by this process |",
            f"| RAM | {self.ram_gib:.1f} GiB |",
            f"| system | {self.system} |",
            f"| Python | {self.python} |",
            f"| load average at start | {load} |",
        ])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the portable fallback
    return platform.processor() or platform.machine() or "unknown"


def _ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def describe() -> Machine:
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return Machine(
        cpu_model=_cpu_model(), logical_cores=logical, usable_cores=usable, ram_gib=_ram_gib(),
        system=f"{platform.system()} {platform.release()} ({platform.machine()})",
        python=platform.python_version(), load_average=load,
    )
