"""Prometheus metrics and structured JSON logs of the server.

Metrics live in the app's own registry (two apps in one process do not share counters):
requests and latency by endpoint and status, predictions by class, rejected images by
reason, the model's version, and the process/system load (CPU, memory, load average).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ihcflow.ood import OodScorer

# Endpoints are labelled by route, never by raw path (an unknown path would add a series).
ENDPOINTS = frozenset({"/predict", "/segment", "/model", "/healthz", "/readyz", "/metrics", "/docs",
                       "/openapi.json", "/docs/oauth2-redirect", "/redoc"})  # fmt: skip
# OOD score / the model's threshold: 1 is the flag line, whatever the model's score scale
OOD_RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def endpoint_label(path: str) -> str:
    return path if path in ENDPOINTS else "other"


class SystemLoadCollector(Collector):
    """The paper's "system load": this process's CPU share and memory, the host's load."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call only starts the measurement

    def collect(self) -> Iterator[Metric]:
        with self.process.oneshot():
            cpu = self.process.cpu_percent(None)
            rss = self.process.memory_info().rss
            threads = self.process.num_threads()
        yield GaugeMetricFamily(
            "ihcflow_process_cpu_percent",
            "CPU used by the server process since the last scrape (100 = one core)",
            value=cpu,
        )
        yield GaugeMetricFamily(
            "ihcflow_process_memory_bytes", "Resident memory of the server process", value=rss
        )
        yield GaugeMetricFamily("ihcflow_process_threads", "Threads of the process", value=threads)
        load1, _, _ = os.getloadavg()
        yield GaugeMetricFamily("ihcflow_system_load1", "Host load average over 1 min", value=load1)
        yield GaugeMetricFamily(
            "ihcflow_system_memory_available_bytes",
            "Host memory available",
            value=psutil.virtual_memory().available,
        )


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(SystemLoadCollector())
        self.requests = Counter(
            "ihcflow_http_requests", "HTTP requests", ["endpoint", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "ihcflow_http_request_duration_seconds",
            "HTTP request latency (server side, first byte in to last byte out)",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "ihcflow_http_requests_in_flight", "Requests being handled", registry=r
        )
        self.predictions = Counter(
            "ihcflow_predictions", "Predicted images by class", ["model_version", "class"],
            registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "ihcflow_rejected_images", "Uploads refused, by reason", ["reason"], registry=r
        )
        self.images_per_request = Histogram(
            "ihcflow_images_per_request", "Images in a /predict request",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )  # fmt: skip
        self.prepare_seconds = Histogram(
            "ihcflow_prepare_duration_seconds",
            "Decode + features + preprocess, per image",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "ihcflow_inference_duration_seconds",
            "Model run (ONNX Runtime), per request batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.log_errors = Counter(
            "ihcflow_prediction_log_errors", "Prediction log writes that failed", registry=r
        )
        self.model_info = Gauge(
            "ihcflow_model_info", "The served model (value 1)", ["name", "version"], registry=r
        )
        self.ready = Gauge("ihcflow_model_ready", "1 when the model is loaded", registry=r)
        self.ood_ratio = Histogram(
            "ihcflow_ood_score_ratio",
            "Out-of-distribution score per image divided by the model's threshold (> 1: flagged)",
            ["model_version"],
            buckets=OOD_RATIO_BUCKETS,
            registry=r,
        )
        self.ood_flagged = Counter(
            "ihcflow_ood_flagged", "Images flagged out of distribution", ["model_version"],
            registry=r,
        )  # fmt: skip
        self.ood_misframed = Counter(
            "ihcflow_ood_misframed",
            "Images flagged by the framing check (framed wider than the training images)",
            ["model_version"],
            registry=r,
        )
        self.ood_threshold = Gauge(
            "ihcflow_ood_threshold", "The served model's OOD threshold (score units)",
            ["model_version"], registry=r,
        )  # fmt: skip

    def observe_ood(self, version: str, ood: Mapping[str, Any], scorer: OodScorer | None) -> None:
        """One image's ``{"score", "flag"[, "zoom_gain", "misframed"]}``."""
        if scorer is None:
            return
        self.ood_ratio.labels(version).observe(float(ood["score"]) / scorer.threshold)
        if ood["flag"]:
            self.ood_flagged.labels(version).inc()
        if ood.get("misframed"):
            self.ood_misframed.labels(version).inc()

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        labels = (endpoint, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)


# ---------------------------------------------------------------------------------------------
# JSON logs

_RESERVED = set(vars(logging.makeLogRecord({})))
LIBRARY_LOGGERS = ("python_multipart", "multipart")  # python-multipart (and its old name)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        out.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for our loggers and uvicorn's (its access log is replaced)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("ihcflow", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    # The multipart parser logs what it rejects ("Expected boundary character ...") at warning
    # level; without a handler Python prints it as plain text. The 400 answer and our access
    # log already say it, so only its errors are kept, as JSON.
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.ERROR)
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True
