"""The benchmark's real-photo series: what phone photos cost the gateway, and what shrinking saves.

Images (loadtest/photos.py, made offline): a 12 MP photo-like JPEG of about 4 MB, a 640x480 JPEG,
and the small example PNGs. Through the batching gateway at `CONCURRENCY` in flight:

* the 12 MP photo uploaded whole, and shrunk by the client first (`imgclass_client.imaging`, what
  `shrink=True` sends: a PNG of the model's input size); the client's own cost of shrinking is
  measured on one core beside it;
* the 640x480 photo whole, and the small PNGs (the mix the sweep uses).

Also, in this process while the servers idle: decode of the 12 MP photo with the gateway's decoder
on 1 and on 2 threads at once (Pillow releases the GIL while decoding, so threads scale with
cores), and the gateway's resident memory before, at its peak during, and right after the photos
(large decodes leave the C allocator's arenas big unless memory is handed back: gateway/decode.py).

Goals: shrinking sends >= 20x fewer bytes and gets >= 10x more photos/s through the gateway than
the full upload; without shrinking, the gateway's photos/s reach >= 0.8 x cores x the single-core
decode rate measured in the same run (the report adds the gateway's rate per CPU-second of its own
and what the photo costs every process, since the load generator and the model server share these
cores); memory returns to within `RSS_RETURN_MIB` of idle.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psutil

from gateway.decode import DecodeLimits, InputSpec, decode_image
from imgclass_client.imaging import shrink_image
from loadtest import photos
from loadtest.bench_report import CPU_GATEWAY, CPU_MODEL_SERVER, DecodeRate, Goal, ratio
from loadtest.loadgen import LOADGEN_CPU, LoadGenerator, Sample, Workload
from loadtest.probes import ProcessCpu

CONCURRENCY = 8
RSS_RETURN_MIB = 25.0
SERIES_FULL = "12 MP photo, full upload"
SERIES_SHRUNK = "12 MP photo, shrunk by the client"
SERIES_VGA = "640x480 photo, full upload"
SERIES_SMALL = "small example PNGs"


@dataclass
class PhotoResult:
    camera_bytes: int
    shrunk_bytes: int
    vga_bytes: int
    shrink_cpu_ms: float  # the client's CPU to shrink one 12 MP photo
    cores: int
    decode: dict[int, DecodeRate] = field(default_factory=dict)  # threads -> 12 MP decode rate
    samples: list[Sample] = field(default_factory=list)
    rss_mib: dict[str, float] = field(default_factory=dict)  # idle, peak, after

    def at(self, series: str) -> Sample | None:
        return next((s for s in self.samples if s.series == series and s.calls), None)


def decode_threads(jpeg: bytes, spec: InputSpec, threads: int, seconds: float) -> DecodeRate:
    """`threads` threads decoding `jpeg` for `seconds`: photos done, wall time, CPU time of all."""
    limits = DecodeLimits()
    decode_image(jpeg, spec, limits)  # warm
    stop = time.perf_counter() + seconds
    cpu0 = time.process_time()

    def loop() -> int:
        done = 0
        while time.perf_counter() < stop:
            decode_image(jpeg, spec, limits)
            done += 1
        return done

    wall0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        count = sum(pool.map(lambda _: loop(), range(threads)))
    return DecodeRate(count, time.perf_counter() - wall0, time.process_time() - cpu0,
                      f"a {photos.CAMERA_SIZE[0]}x{photos.CAMERA_SIZE[1]} JPEG on {threads} thread(s)")


class _PeakRss:
    """The highest resident memory of a process, sampled every 50 ms in a thread."""

    def __init__(self, pid: int):
        self._process = psutil.Process(pid)
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._process.memory_info().rss / 2**20)

    def __enter__(self) -> "_PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(gen: LoadGenerator, target: str, gateway_pid: int, server_pid: int, spec: InputSpec,
            small_images: list[bytes], seconds: float, cores: int, progress) -> PhotoResult:
    progress("real photos: making a 12 MP photo-like JPEG ...")
    camera, vga = photos.camera_photo(), photos.vga_photo()
    started = time.process_time()
    shrunk = shrink_image(camera, spec)
    result = PhotoResult(len(camera), len(shrunk), len(vga), 1000 * (time.process_time() - started), cores)
    for threads in (1, 2):
        progress(f"real photos: decode of the 12 MP photo on {threads} thread(s) ...")
        result.decode[threads] = decode_threads(camera, spec, threads, seconds)
    process = psutil.Process(gateway_pid)
    result.rss_mib["idle"] = process.memory_info().rss / 2**20
    plan = [(SERIES_FULL, camera), (SERIES_SHRUNK, shrunk), (SERIES_VGA, vga)]
    with _PeakRss(gateway_pid) as peak:
        for series, payload in plan:
            progress(f"{series}: {CONCURRENCY} in flight ...")
            probes = [ProcessCpu(CPU_GATEWAY, gateway_pid), ProcessCpu(CPU_MODEL_SERVER, server_pid)]
            result.samples.append(gen.measure(series, Workload("classify", target, (payload,), timeout_s=60),
                                              CONCURRENCY, probes))
    result.rss_mib["peak"] = peak.peak
    time.sleep(1.5)  # the decoder releases memory 0.5 s after a burst (gateway/decode.py)
    result.rss_mib["after"] = process.memory_info().rss / 2**20
    progress(f"{SERIES_SMALL}: {CONCURRENCY} in flight ...")
    probes = [ProcessCpu(CPU_GATEWAY, gateway_pid), ProcessCpu(CPU_MODEL_SERVER, server_pid)]
    result.samples.append(gen.measure(SERIES_SMALL, Workload("classify", target, tuple(small_images)),
                                      CONCURRENCY, probes))
    return result


GOAL_BYTES = ("bytes per 12 MP photo: full upload vs shrunk by the client", "≥ 20× fewer")
GOAL_SHRUNK = (f"12 MP photos/s through the gateway at {CONCURRENCY} in flight: shrunk vs full upload", "≥ 10×")
GOAL_DECODE = ("12 MP photos/s through the gateway, full upload, vs cores × single-core decode rate", "≥ 0.8×")
GOAL_MEMORY = ("gateway resident memory right after the photos vs idle", f"≤ idle + {RSS_RETURN_MIB:.0f} MiB")


def goals(r: PhotoResult | None) -> list[Goal]:
    """Every goal of the series, `not measured` when the series was not."""
    if r is None:
        return [Goal(name, "n/a (not measured)", target, None)
                for name, target in (GOAL_BYTES, GOAL_SHRUNK, GOAL_DECODE, GOAL_MEMORY)]
    full, shrunk = r.at(SERIES_FULL), r.at(SERIES_SHRUNK)
    out = [Goal(GOAL_BYTES[0], f"{r.camera_bytes / r.shrunk_bytes:,.0f}× fewer ({r.camera_bytes:,} vs "
                                 f"{r.shrunk_bytes:,} B)", GOAL_BYTES[1], r.camera_bytes >= 20 * r.shrunk_bytes)]
    x = ratio(shrunk and shrunk.images_per_s, full and full.images_per_s)
    out.append(Goal(GOAL_SHRUNK[0], "n/a" if x is None else
                    f"{x:.1f}× ({shrunk.images_per_s:,.0f} vs {full.images_per_s:,.1f})",
                    GOAL_SHRUNK[1], None if x is None else x >= 10).counting_errors(shrunk, full))
    one = r.decode.get(1)
    x = ratio(full and full.images_per_s, r.cores * one.per_core if one else None)
    out.append(Goal(GOAL_DECODE[0], "n/a" if x is None else
                    f"{x:.2f}× ({full.images_per_s:,.1f} vs {r.cores} × {one.per_core:,.1f})"
                    + _decode_share(full, one, r.cores),
                    GOAL_DECODE[1], None if x is None else x >= 0.8).counting_errors(full))
    idle, after = r.rss_mib.get("idle"), r.rss_mib.get("after")
    out.append(Goal(GOAL_MEMORY[0], "n/a" if idle is None or after is None else
                    f"{after:,.0f} vs {idle:,.0f} MiB (peak {r.rss_mib.get('peak', float('nan')):,.0f})",
                    GOAL_MEMORY[1], None if idle is None or after is None else after <= idle + RSS_RETURN_MIB))
    return out


def _decode_share(full: Sample, one: DecodeRate, cores: int) -> str:
    """What the full-upload figure is made of: the gateway's photos per CPU-second of its own against
    the decode rate, and the CPU every process spends per photo, which caps the shared cores (the
    goal's cores x decode rate presumes the gateway has every core to itself)."""
    gateway, server, loadgen = (full.cpu_ms_per_image(p) for p in (CPU_GATEWAY, CPU_MODEL_SERVER, LOADGEN_CPU))
    if not all(v == v and v > 0 for v in (gateway, server, loadgen)):  # NaN: not measured
        return ""
    total = gateway + server + loadgen
    return (f"; per CPU-second of its own, the gateway reaches {1000 / gateway / one.per_core:.2f}× the decode "
            f"rate; every process together spends {total:,.0f} ms of CPU per photo (gateway {gateway:,.0f}, model "
            f"server {server:,.1f}, load generator {loadgen:,.1f}), which caps {cores} shared cores at "
            f"{1000 * cores / total:,.0f} photos/s")


def markdown(r: PhotoResult | None, table) -> list[str]:
    """The report's section; `table(samples)` renders samples as the CPU table does."""
    if r is None:
        return []
    lines = ["## Real photos", "",
             f"Through the batching gateway at {CONCURRENCY} in flight: a {photos.CAMERA_SIZE[0]}×"
             f"{photos.CAMERA_SIZE[1]} photo-like JPEG ({r.camera_bytes:,} B; loadtest/photos.py) uploaded whole "
             f"and shrunk by the client to a {r.shrunk_bytes:,} B PNG of the model's input (what imgclass-client's "
             f"`shrink=True` sends; shrinking cost the client {r.shrink_cpu_ms:.0f} ms of CPU), a 640×480 JPEG "
             f"({r.vga_bytes:,} B), and the small example PNGs.", "", *table(r.samples), ""]
    one, two = r.decode.get(1), r.decode.get(2)
    if one and two:
        lines += ["Decode scaling, the 12 MP photo with the gateway's decoder in this process while the servers idle "
                  "(Pillow releases the GIL while decoding; the gateway's `decode_workers` default to the cores; "
                  "cores used is CPU seconds per wall-clock second, so other work on the machine shows there):", "",
                  "| threads | photos/s | photos per CPU-second | cores used |", "|---:|---:|---:|---:|",
                  *[f"| {n} | {d.per_wall_second:,.1f} | {d.per_core:,.1f} | {d.cpu_s / d.wall_s:.2f} |"
                    for n, d in sorted(r.decode.items())],
                  "", f"2 threads vs 1: {two.per_wall_second / one.per_wall_second:.2f}× the photos per second.", ""]
    if r.rss_mib:
        lines += [f"Gateway resident memory: {r.rss_mib.get('idle', 0):,.0f} MiB before the photos, peak "
                  f"{r.rss_mib.get('peak', 0):,.0f} MiB during, {r.rss_mib.get('after', 0):,.0f} MiB 1.5 s "
                  "after (the decoder hands the allocator's free memory back after the last large decode).", ""]
    return lines
