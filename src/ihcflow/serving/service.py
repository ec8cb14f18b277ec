"""One ``/predict`` request without the HTTP: prepare every upload, predict the batch, log it.

Runs in a worker thread (decoding, preprocessing and ONNX Runtime release the GIL), so the
event loop keeps accepting requests while a batch is predicted.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ihcflow.images.codec import ImageError
from ihcflow.kept_uploads import KeptUploads
from ihcflow.prediction_log import PredictionLog, iso_z, make_record
from ihcflow.serving.errors import ApiError
from ihcflow.serving.model import Prepared, ServedModel
from ihcflow.serving.observability import ServingMetrics
from ihcflow.serving.settings import Settings
from ihcflow.serving.uploads import Upload

log = logging.getLogger("ihcflow.serving")


def _short(values: np.ndarray) -> list[float]:
    """float32 values as JSON numbers with float32 precision (7 significant digits)."""
    return [float(f"{v:.7g}") for v in values.tolist()]


class PredictionService:
    def __init__(
        self,
        model: ServedModel,
        prediction_log: PredictionLog,
        metrics: ServingMetrics,
        settings: Settings,
        kept: KeptUploads | None = None,
    ) -> None:
        self.model = model
        self.log = prediction_log
        self.metrics = metrics
        self.settings = settings
        self.kept = kept  # --log-images: the uploads kept for labelling

    def _prepare(self, upload: Upload) -> tuple[Prepared, bytes]:
        start = time.perf_counter()
        data = upload.read()
        try:
            prepared = self.model.prepare(
                data,
                upload.source,
                max_pixels=self.settings.max_pixels,
                min_side=self.settings.min_side,
            )
        except ImageError as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            raise ApiError.from_image_error(exc, upload.filename) from None
        except (ValueError, cv2.error) as exc:  # decodable, but the pipeline cannot use it
            self.metrics.rejected.labels("unprocessable").inc()
            raise ApiError(
                422, "unprocessable", f"{upload.source}: cannot be preprocessed: {exc}",
                upload.filename,
            ) from None  # fmt: skip
        self.metrics.prepare_seconds.observe(time.perf_counter() - start)
        return prepared, data if self.kept is not None else b""  # bytes only to keep them

    def predict(self, uploads: Sequence[Upload], request_id: str, started: float) -> dict[str, Any]:
        """The response body; raises :class:`ApiError` for a bad upload or an unwritable log.

        ``started`` is the request's ``time.perf_counter()`` at arrival: ``latency_ms`` is
        the server-side time from then until the predictions are ready.
        """
        self.metrics.images_per_request.observe(len(uploads))
        prepared = [self._prepare(u) for u in uploads]  # all or nothing: one bad file, 4xx
        start = time.perf_counter()
        judged = self.model.judge([p for p, _ in prepared])
        self.metrics.inference_seconds.observe(time.perf_counter() - start)
        probs, embedding = judged.probs, judged.embedding
        ood = None if judged.ood is None else judged.ood.records()
        latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
        classes = self.model.class_names
        now = self.log.now()
        ts = iso_z(now)
        results, records = [], []
        for i, (upload, (item, data)) in enumerate(zip(uploads, prepared, strict=True)):
            predicted = classes[int(np.argmax(probs[i]))]
            probs_i = dict(zip(classes, _short(probs[i]), strict=True))
            result: dict[str, Any] = {
                "filename": upload.filename,
                "predicted": predicted,
                "probs": probs_i,
            }
            if ood is not None:
                result["ood"] = ood[i]
            results.append(result)
            records.append(
                make_record(
                    ts=ts,
                    request_id=request_id,
                    model_name=self.model.name,
                    model_version=self.model.version,
                    filename=upload.filename,
                    predicted=predicted,
                    probs=probs_i,
                    features=item.features,
                    acquisition=item.acquisition,
                    latency_ms=latency_ms,
                    ood=None if ood is None else ood[i],
                    embedding=_short(embedding[i]) if self.settings.log_embedding else None,
                    image_sha256=self._keep(data, item.format, now.date(), request_id),
                )
            )
        try:
            self.log.write(records)
        except (OSError, ValueError) as exc:
            self.metrics.log_errors.inc()
            log.error(
                "prediction log write failed", extra={"request_id": request_id, "error": str(exc)}
            )
            raise ApiError(
                503,
                "log_unavailable",
                "the prediction could not be written to the prediction log, so it is not "
                "returned; try again later",
            ) from None
        for result in results:
            self.metrics.predictions.labels(self.model.version, result["predicted"]).inc()
            if ood is not None:
                self.metrics.observe_ood(self.model.version, result["ood"], self.model.ood)
        return {
            "request_id": request_id,
            "model_name": self.model.name,
            "model_version": self.model.version,
            "predictions": results,
            "latency_ms": latency_ms,
        }

    def _keep(self, data: bytes, image_format: str, day: dt.date, request_id: str) -> str | None:
        """Keep an accepted upload (--log-images); its sha256 for the log line. A failure is
        logged and the prediction still answered: the image is then not kept, and the line
        has no ``image_sha256``."""
        if self.kept is None:
            return None
        try:
            return self.kept.keep(data, image_format, day)
        except OSError as exc:
            log.error("upload not kept", extra={"request_id": request_id, "error": str(exc)})
            return None
