"""One ``/segment`` request without the HTTP: decode the image, segment it with the registered
nuclei model (sliding windows over any size, ``ihcflow.segmentation.model_format``), count.

The answer: the number of nuclei, the DAB-positive ones, the Ki-67 index (positive / all),
the mean nucleus area, and the instance mask (16-bit PNG: 0 background, 1..K one id per
nucleus) as base64 in JSON, or as the body itself for ``Accept: image/png``.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import cv2
import numpy as np

from ihcflow.images.codec import ImageError, decode_rgb8
from ihcflow.segmentation.labels import encode_instances
from ihcflow.segmentation.model_format import SegModel
from ihcflow.serving.errors import ApiError
from ihcflow.serving.observability import ServingMetrics
from ihcflow.serving.settings import Settings
from ihcflow.serving.uploads import Upload


class SegmentService:
    def __init__(self, model: SegModel, metrics: ServingMetrics, settings: Settings) -> None:
        self.model = model
        self.metrics = metrics
        self.settings = settings

    @property
    def name(self) -> str:
        return str(self.model.info["name"])

    @property
    def version(self) -> str:
        return str(self.model.info["version"])

    def segment(self, upload: Upload, request_id: str, started: float) -> dict[str, Any]:
        """The response body, with the mask PNG's bytes under ``mask_png`` (raw)."""
        try:
            rgb, _ = decode_rgb8(upload.read(), upload.source, max_pixels=self.settings.max_pixels)
        except ImageError as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            raise ApiError.from_image_error(exc, upload.filename) from None
        except (ValueError, cv2.error) as exc:
            self.metrics.rejected.labels("unprocessable").inc()
            raise ApiError(
                422, "unprocessable", f"{upload.source}: cannot be decoded: {exc}", upload.filename
            ) from None
        start = time.perf_counter()
        ann = self.model.segment(rgb).annotation
        self.metrics.inference_seconds.observe(time.perf_counter() - start)
        areas = np.bincount(ann.instances.ravel(), minlength=ann.count + 1)[1:]
        index = ann.positive / ann.count if ann.count else None
        self.metrics.predictions.labels(self.version, "nucleus").inc(ann.count)
        return {
            "request_id": request_id,
            "model_name": self.name,
            "model_version": self.version,
            "filename": upload.filename,
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
            "count": ann.count,
            "positive": ann.positive,
            "ki67_index": None if index is None else round(index, 6),
            "mean_area_px": round(float(areas.mean()), 3) if ann.count else None,
            "mask_png": encode_instances(ann.instances),
            "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
        }


def json_body(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the mask as base64 (``mask_png_base64``)."""
    body = {k: v for k, v in result.items() if k != "mask_png"}
    body["mask_png_base64"] = base64.b64encode(result["mask_png"]).decode("ascii")
    return body


def png_headers(result: dict[str, Any]) -> dict[str, str]:
    """The counts as headers of an ``image/png`` answer."""
    index = result["ki67_index"]
    area = result["mean_area_px"]
    return {
        "X-Model-Version": result["model_version"],
        "X-Nuclei-Count": str(result["count"]),
        "X-Nuclei-Positive": str(result["positive"]),
        "X-Ki67-Index": "" if index is None else str(index),
        "X-Mean-Area-Px": "" if area is None else str(area),
    }
