"""Loading one version end to end: restore the SavedModel, replay its warm-up records, record the
load metrics TF Serving records. Blocking; the manager runs it on its loader thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from serving.metrics import ServerMetrics
from serving.savedmodel import LoadError, LoadedModel
from serving.warmup import run_warmup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionLoader:
    tags: frozenset[str]
    warmup: bool
    warmup_iterations: int
    metrics: ServerMetrics

    def __call__(self, path: Path) -> LoadedModel:
        model_path = str(path)
        start = time.perf_counter()
        try:
            model = LoadedModel.load(path, self.tags)
        except BaseException:
            self.metrics.load_attempt_count.labels(model_path, "fail").inc()
            raise
        self.metrics.load_attempt_count.labels(model_path, "success").inc()
        self.metrics.load_latency.labels(model_path).inc((time.perf_counter() - start) * 1e6)
        log.info("SavedModel load for tags { %s }; Status: success. Took %d microseconds.",
                 " ".join(sorted(self.tags)), (time.perf_counter() - start) * 1e6)
        if self.warmup:
            start = time.perf_counter()
            status = "OK"
            try:
                run_warmup(model, self.warmup_iterations)
            except BaseException as exc:
                status = str(LoadError.from_exception(exc))
                raise
            finally:
                self.metrics.warmup_latency.labels(model_path, status).observe((time.perf_counter() - start) * 1e6)
        return model
