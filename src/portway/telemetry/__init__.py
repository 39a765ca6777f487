"""Observability: Prometheus metrics (`metrics`), optional OpenTelemetry traces (`tracing`), request ids and
log formatting (`logs`).

The bottom layer: every other package may use it, and it imports nothing of portway's but config, errors and
settings. OpenTelemetry is imported only when tracing is configured (the `otel` extra).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from portway.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess(data_dir: Path, workers: int) -> None:
    """Before the workers start: with several workers, a fresh, empty directory for their metric files (files
    left from an earlier run would be added to this run's). A directory the operator chose through the
    environment is used as it is. Imports no prometheus-client: its mode is fixed when a worker imports it."""
    if workers <= 1 or os.environ.get(MULTIPROC_ENV):
        return
    path = (data_dir / "prometheus-multiproc").resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)  # the workers inherit it


def prepare_serve(settings: Settings) -> dict[str, Any]:
    """What `portway serve` does before uvicorn starts: the metrics directory for several workers, and the
    logging config (dictConfig, also handed to uvicorn for the workers) in PORTWAY_LOG_FORMAT."""
    from portway.telemetry.logs import log_config

    prepare_multiprocess(settings.data_dir, settings.workers)
    return log_config(settings.log_level, settings.log_format)
