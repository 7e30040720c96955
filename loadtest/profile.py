"""Where a server process's CPU goes: py-spy, a sampling profiler, attached for one measured window.

`Profiler` is a probe of loadtest/loadgen.py (begin/end/record around the measured window). It
runs two py-spy recordings of the process side by side (`--nonblocking`: the process is never
paused, so the profiled point is measured as the others are; idle threads are left out, so the
samples are where CPU time went): a flame graph SVG, and the same stacks as text, from which
`top` builds the table of functions by own ("self") time and by time including their callees.
Sample counts become milliseconds of CPU per image with the CPU time the bench measured for the
process in the same window.

py-spy needs ptrace rights on the process (root, or the same user with the kernel's
`ptrace_scope` at 0 or 1 for a child); when it cannot attach, `Profile.error` says why and the
benchmark goes on without a profile.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent) + "/"
RATE_HZ = 97  # samples per second: off the round numbers timers and pollers tick at
TOP = 20
FLAME_SVG = "profile.svg"
STACKS_TXT = "profile-stacks.txt"


@dataclass(frozen=True)
class Entry:
    function: str  # "name (path)"; lines are merged
    own: int       # samples with this function running
    total: int     # samples with this function on the stack


@dataclass
class Profile:
    process: str
    samples: int = 0
    entries: list[Entry] = field(default_factory=list)
    error: str = ""
    svg: str = ""     # file name in the report folder
    stacks: str = ""  # file name in the report folder


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _frame_name(frame: str) -> str:
    """'handle (gateway/core.py:120)' -> 'handle (gateway/core.py)': one row per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker != "site-packages/":
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    else:
        path = path.split(ROOT, 1)[-1]
    return f"{name} ({path})" if path else name


def top(stacks_text: str, limit: int = TOP) -> tuple[int, list[Entry]]:
    """py-spy's raw output (one `frame;frame;...;leaf COUNT` line per distinct stack, root first)
    -> (samples, the `limit` functions with the most own time)."""
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    for line in stacks_text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    return samples, [Entry(name, n, total[name]) for name, n in own.most_common(limit)]


class Profiler:
    """Probe: py-spy on `pid` over the measured window, written to `folder`; `profile` after `end`."""

    def __init__(self, process: str, pid: int, folder: Path, rate_hz: int = RATE_HZ):
        self.profile = Profile(process)
        self._pid, self._folder, self._rate = pid, folder, rate_hz
        self._runs: list[subprocess.Popen] = []

    def _start(self, fmt: str, output: str) -> subprocess.Popen:
        exe = py_spy()
        assert exe is not None
        cmd = [exe, "record", "--pid", str(self._pid), "--rate", str(self._rate), "--nonblocking",
               "--format", fmt, "--output", str(self._folder / output)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def begin(self) -> None:
        if py_spy() is None:
            self.profile.error = "py-spy is not installed (pip install py-spy; it is in the dev extra)"
            return
        for name in (STACKS_TXT, FLAME_SVG):  # a previous run's files must not pass for this one's
            (self._folder / name).unlink(missing_ok=True)
        for fmt, output in (("raw", STACKS_TXT), ("flamegraph", FLAME_SVG)):
            self._runs.append(self._start(fmt, output))  # kept one by one: `end` stops whatever started

    def end(self) -> None:
        outputs = []
        for run in self._runs:  # py-spy writes its output when interrupted, as on Ctrl-C
            run.send_signal(signal.SIGINT)
        for run in self._runs:
            try:
                outputs.append(run.communicate(timeout=30)[0])
            except subprocess.TimeoutExpired:
                run.kill()
                outputs.append(run.communicate()[0])
        stacks, svg = self._folder / STACKS_TXT, self._folder / FLAME_SVG
        if self._runs and not stacks.exists():
            last = " ".join(line for out in outputs for line in out.strip().splitlines()[-2:])
            self.profile.error = f"py-spy could not profile process {self._pid}: {last or 'no output'}"
            return
        if stacks.exists():
            self.profile.samples, self.profile.entries = top(stacks.read_text(encoding="utf-8", errors="replace"))
            self.profile.stacks = STACKS_TXT
        if svg.exists():
            self.profile.svg = FLAME_SVG

    def record(self, sample) -> None:
        """Nothing goes into the sample: the profile is the report's own section."""


def markdown(profile: Profile, cpu_ms_per_image: float) -> list[str]:
    """The report's section lines: the table, the flame graph, or why there is none."""
    if profile.error:
        return [f"No profile: {profile.error}.", ""]
    if not profile.samples:
        return ["No profile: py-spy took no samples (was the process idle?).", ""]
    per_sample = cpu_ms_per_image / profile.samples if cpu_ms_per_image == cpu_ms_per_image else float("nan")
    lines = [f"{profile.samples:,} samples of the {profile.process}'s threads that were running or ready to run "
             f"({RATE_HZ} Hz, py-spy `--nonblocking`; idle threads left out, but a thread waiting for a core on a busy "
             f"machine counts); ms/img converts each share with the {cpu_ms_per_image:.2f} ms of CPU per image "
             "measured in the same window. Own: the function itself was running (with the C code it calls: grpc's core "
             "in its poller thread shows as `Thread.run`, the event loop's compiled callbacks as `Handle._run`); "
             "with callees: it was on the stack.",
             "", "| # | function (file) | own % | own ms/img | with callees % |", "|---:|---|---:|---:|---:|"]
    for rank, e in enumerate(profile.entries, start=1):
        lines.append(f"| {rank} | `{e.function}` | {100 * e.own / profile.samples:.1f} | "
                     f"{e.own * per_sample:.3f} | {100 * e.total / profile.samples:.1f} |")
    lines.append("")
    if profile.svg:
        lines += [f"Flame graph: [{profile.svg}]({profile.svg}) (open it in a browser: it is interactive); "
                  f"the stacks as text: [{profile.stacks}]({profile.stacks}).", ""]
    return lines
