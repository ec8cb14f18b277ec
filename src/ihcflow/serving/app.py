"""The HTTP API: ``POST /predict``, ``POST /segment``, ``GET /model``, ``/healthz``, ``/readyz``,
``/metrics``.

``create_app(settings)`` builds the FastAPI app; the model is loaded at start-up (or passed
in). If it cannot be loaded the server still starts: ``/healthz`` answers, ``/readyz`` and
``/predict`` answer 503 with the reason, so an orchestrator shows why the pod is not ready.
``/segment`` (the nuclei model, ``models/segmentation/``) is optional: without that model it
answers 503 with the reason, and readiness is the classifier's.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ihcflow import __version__
from ihcflow.kept_uploads import KeptUploads
from ihcflow.prediction_log import PredictionLog
from ihcflow.segmentation.model_format import SegModel
from ihcflow.serving.errors import ApiError
from ihcflow.serving.model import ModelLoadError, ServedModel
from ihcflow.serving.observability import ServingMetrics, configure_logging, endpoint_label
from ihcflow.serving.segment import SegmentService, json_body, png_headers
from ihcflow.serving.service import PredictionService
from ihcflow.serving.settings import Settings
from ihcflow.serving.uploads import receive_uploads

log = logging.getLogger("ihcflow.serving")
access_log = logging.getLogger("ihcflow.serving.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
EXPIRE_EVERY_S = 24 * 3600  # kept uploads past their retention are deleted this often


# --- response schemas (OpenAPI docs) --------------------------------------------------------


class OodResult(BaseModel):
    score: float = Field(description="distance to the nearest training class in embedding space")
    flag: bool = Field(
        description="out of distribution: score above its threshold, or misframed (both "
        "calibrated at registration)"
    )
    zoom_gain: float | None = Field(
        None,
        description="framing check: score minus the score of the image's centre zoomed in "
        "(absent when the model has no framing check)",
    )
    misframed: bool | None = Field(
        None,
        description="the zoomed centre is closer to the training classes than the image by "
        "more than the framing threshold: framed wider than the training images",
    )

    @model_serializer(mode="wrap")
    def _framing_only_when_checked(self, handler: SerializerFunctionWrapHandler) -> Any:
        return {k: v for k, v in handler(self).items() if v is not None}


class ImagePrediction(BaseModel):
    filename: str | None = Field(description="the uploaded file's name (null for a raw body)")
    predicted: str = Field(description="the most probable class")
    probs: dict[str, float] = Field(description="probability per class (sums to 1)")
    ood: OodResult | None = Field(
        None,
        description="out-of-distribution score and flag (null when model.json has no ood "
        "section: GET /model says why)",
    )


class PredictResponse(BaseModel):
    request_id: str
    model_name: str
    model_version: str
    predictions: list[ImagePrediction] = Field(description="one per uploaded image, in order")
    latency_ms: float = Field(description="server-side time from arrival to predictions")


class SegmentResponse(BaseModel):
    request_id: str
    model_name: str
    model_version: str
    filename: str | None
    width: int
    height: int
    count: int = Field(description="nuclei found")
    positive: int = Field(description="DAB-positive nuclei")
    ki67_index: float | None = Field(description="positive / count (null without nuclei)")
    mean_area_px: float | None = Field(description="mean nucleus area in pixels")
    mask_png_base64: str = Field(
        description="16-bit PNG instance mask (0 background, 1..count one id per nucleus)"
    )
    latency_ms: float


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable code, e.g. corrupt, too_large")
    detail: str = Field(description="what is wrong, naming the file")
    file: str | None = None
    request_id: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "empty body, no file, malformed multipart",
        401: "missing or wrong bearer token (when authentication is on)",
        413: "a file over the byte or pixel limit, too many files",
        415: "not an image, or an unsupported format or pixel type",
        422: "corrupt or truncated image",
        503: "model not loaded, or the prediction log is not writable",
    }.items()
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "PNG, JPEG, TIFF or BMP images (one or several)",
                        }
                    },
                    "required": ["files"],
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/tiff": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


# --- state -----------------------------------------------------------------------------------


class ServingState:
    """What the endpoints share: settings, metrics, and the service once the model is loaded."""

    def __init__(self, settings: Settings, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.service: PredictionService | None = None
        self.not_ready = "starting"
        self.segmenter: SegmentService | None = None
        self.seg_not_ready = "starting"
        self.limiter: anyio.CapacityLimiter | None = None

    def start(self, model: ServedModel | None, segmenter: SegModel | None = None) -> None:
        s = self.settings
        self.limiter = anyio.CapacityLimiter(s.max_concurrency)
        self._start_segmenter(segmenter)
        try:
            model = model or ServedModel.load(s.model_dir, threads=s.intra_op_threads)
            prediction_log = PredictionLog(s.log_dir, fsync=s.log_fsync)
            kept = None
            if s.log_images is not None:
                kept = KeptUploads(s.log_images, s.log_images_retention_days)
        except (ModelLoadError, OSError) as exc:
            self.not_ready = str(exc)
            log.error("model not loaded: the server is not ready", extra={"error": str(exc)})
            return
        self.service = PredictionService(model, prediction_log, self.metrics, s, kept)
        self.expire_uploads()
        self.not_ready = ""
        self.metrics.model_info.labels(model.name, model.version).set(1)
        self.metrics.ready.set(1)
        if model.ood is not None:
            self.metrics.ood_threshold.labels(model.version).set(model.ood.threshold)
        else:
            log.warning("no out-of-distribution scoring", extra={"reason": model.ood_note})
        log.info(
            "model loaded",
            extra={
                "model_name": model.name,
                "model_version": model.version,
                "classes": model.class_names,
                "input_size": model.input_size,
                "log_dir": str(s.log_dir),
                "auth": s.auth_enabled,
                "threads": s.intra_op_threads,
                "concurrency": s.max_concurrency,
                "ood": model.ood is not None,
            },
        )

    def expire_uploads(self) -> None:
        """Delete the kept uploads older than the retention (at start, then daily)."""
        kept = self.service.kept if self.service is not None else None
        if kept is None:
            return
        try:
            removed = kept.expire()
        except OSError as exc:
            log.error("expired uploads not deleted", extra={"error": str(exc)})
            return
        log.info(
            "kept uploads",
            extra={
                "log_images": str(kept.root),
                "retention_days": kept.retention_days,
                "deleted_days": removed,
            },
        )

    def _start_segmenter(self, segmenter: SegModel | None) -> None:
        s = self.settings
        try:
            segmenter = segmenter or SegModel.load(
                s.segmentation_model_dir, threads=s.intra_op_threads
            )
        except (ModelLoadError, OSError) as exc:
            self.seg_not_ready = str(exc)
            log.warning("segmentation model not loaded: /segment answers 503",
                        extra={"error": str(exc)})  # fmt: skip
            return
        self.segmenter = SegmentService(segmenter, self.metrics, s)
        self.seg_not_ready = ""
        self.metrics.model_info.labels(self.segmenter.name, self.segmenter.version).set(1)
        log.info(
            "segmentation model loaded",
            extra={"model_name": self.segmenter.name, "model_version": self.segmenter.version},
        )

    def ready_segmenter(self) -> SegmentService:
        if self.segmenter is None:
            raise ApiError(503, "not_ready", f"segmentation model not loaded: {self.seg_not_ready}")
        return self.segmenter

    def close(self) -> None:
        if self.service is not None:
            self.service.log.close()
        self.metrics.ready.set(0)

    def ready_service(self) -> PredictionService:
        if self.service is None:
            raise ApiError(503, "not_ready", f"model not loaded: {self.not_ready}")
        return self.service


# --- middleware ------------------------------------------------------------------------------


class RequestContext:
    """Request id, timing, metrics and one JSON access-log line per request.

    An unexpected exception becomes a 500 JSON answer without a traceback (the traceback
    goes to the server log with the request id).
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, started=started)
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            state["error"] = "internal_error"
            if not response_started:
                body = ErrorResponse(
                    error="internal_error",
                    detail="internal server error; the server log has the details",
                    request_id=request_id,
                )
                await JSONResponse(body.model_dump(), status_code=500)(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            endpoint = endpoint_label(scope["path"])
            self.metrics.observe_request(endpoint, scope["method"], status, seconds)
            if endpoint not in {"/healthz", "/readyz", "/metrics"} or status >= 400:
                client = scope.get("client")
                access_log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(seconds * 1000.0, 3),
                        "client": client[0] if client else None,
                        "images": state.get("images"),
                        "error": state.get("error"),
                    },
                )


# --- the app ---------------------------------------------------------------------------------


def _error(request: Request, status: int, code: str, detail: str, file: str | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:  # fmt: skip
    request.state.error = code
    body = ErrorResponse(
        error=code, detail=detail, file=file, request_id=getattr(request.state, "request_id", None)
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def create_app(
    settings: Settings | None = None,
    *,
    model: ServedModel | None = None,
    segmenter: SegModel | None = None,
) -> FastAPI:
    """The server app. ``model`` skips loading from ``settings.model_dir`` (tests, benchmarks),
    ``segmenter`` from ``settings.segmentation_model_dir``."""
    settings = settings or Settings.from_env()
    metrics = ServingMetrics()
    state = ServingState(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start(model, segmenter)
        try:
            async with anyio.create_task_group() as tasks:
                if settings.log_images is not None:
                    tasks.start_soon(_expire_daily, state)
                yield
                tasks.cancel_scope.cancel()
        finally:
            state.close()

    app = FastAPI(
        title="ihcflow model server",
        version=__version__,
        description=(
            "Classifies IHC image patches with the registered model. Uploads are prepared "
            "exactly like the training images (the preprocess params in model.json) and every "
            "prediction is appended to the prediction log for drift monitoring."
        ),
        lifespan=lifespan,
    )
    app.state.serving = state
    app.add_middleware(RequestContext, metrics=metrics)  # type: ignore[arg-type]
    bearer = HTTPBearer(auto_error=False, description="IHCFLOW_TOKEN, when authentication is on")

    def authorize(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> None:
        if settings.token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            what = "wrong" if credentials is not None else "missing"
            raise ApiError(401, "unauthorized", f"{what} bearer token (Authorization: Bearer ...)")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(request, exc.status, exc.code, exc.detail, exc.file, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(request, exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(request, 422, "invalid_request", str(exc.errors()))

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra=_UPLOAD_BODY,
        summary="Classify one or several images",
    )
    async def predict(request: Request, _: None = Security(authorize)) -> dict[str, Any]:
        """Send images as multipart file fields (`-F files=@a.png -F files=@b.jpg`) or one
        image as the raw body (`--data-binary @a.png -H 'Content-Type: image/png'`)."""
        service = state.ready_service()
        async with receive_uploads(
            request, max_files=settings.max_files, max_bytes=settings.max_bytes
        ) as uploads:
            request.state.images = len(uploads)
            return await anyio.to_thread.run_sync(
                service.predict,
                uploads,
                request.state.request_id,
                request.state.started,
                limiter=state.limiter,
            )

    @app.post(
        "/segment",
        response_model=SegmentResponse,
        responses={**_ERRORS, 200: {"content": {"image/png": {}}}},
        openapi_extra=_UPLOAD_BODY,
        summary="Segment the nuclei of one image: counts, Ki-67 index, instance mask",
    )
    async def segment(request: Request, _: None = Security(authorize)) -> Any:
        """One image (multipart field or raw body, as for /predict) of any size: large images
        are run in overlapping windows. `Accept: image/png` returns the 16-bit instance mask
        itself, with the counts in `X-Nuclei-*` and `X-Ki67-Index` headers."""
        service = state.ready_segmenter()
        async with receive_uploads(request, max_files=1, max_bytes=settings.max_bytes) as uploads:
            request.state.images = len(uploads)
            result = await anyio.to_thread.run_sync(
                service.segment,
                uploads[0],
                request.state.request_id,
                request.state.started,
                limiter=state.limiter,
            )
        if "image/png" in request.headers.get("accept", ""):
            return Response(result["mask_png"], media_type="image/png", headers=png_headers(result))
        return json_body(result)

    @app.get("/model", summary="The served model: name, version, classes, metrics")
    def model_info(_: None = Security(authorize)) -> dict[str, Any]:
        return state.ready_service().model.summary()

    @app.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded", responses={503: {}})
    def readyz() -> JSONResponse:
        if state.service is None:
            return JSONResponse({"status": "not_ready", "detail": state.not_ready}, 503)
        m = state.service.model
        return JSONResponse(
            {"status": "ready", "model_name": m.name, "model_version": m.version,
             "ood": m.ood is not None}
        )  # fmt: skip

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _expire_daily(state: ServingState) -> None:
    while True:
        await anyio.sleep(EXPIRE_EVERY_S)
        await anyio.to_thread.run_sync(state.expire_uploads)


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (and ``--workers N``): settings from ``IHCFLOW_*``."""
    configure_logging()
    return create_app(Settings.from_env())
