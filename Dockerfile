# The model server: the registered models (models/ and models/segmentation/) baked into a slim
# image without torch. Build from the repository root after `dvc repro` registered a model:
#   docker build -t ihcflow-serve:$(jq -r .version models/model.json) .
#   docker run -p 8000:8000 -e IHCFLOW_TOKEN=... ihcflow-serve:1.0.0
# docs/serving.md has Compose and Kubernetes.

# python:3.11-slim-bookworm (Python 3.11.16, Debian 12), pinned by the digest of its
# multi-platform index as published on Docker Hub on 2026-08-25 (docker-library/repo-info,
# repos/python/remote/3.11-slim-bookworm.md): a rebuild gets the same base until this line
# changes. To refresh (security updates), on a machine with Docker:
#   docker buildx imagetools inspect python:3.11-slim-bookworm
# prints the tag's current index digest on its "Digest:" line: put it here, with the date and the
# Python version (`docker run --rm python:3.11-slim-bookworm@sha256:... python -V`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:fe556eaffd0d96abd8685b83bb8a69addd0dc730fa193669a7df0d49ddcfac02

# --- builder: the same install the tests check: pip install -c requirements.lock .[serve] ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first (their layer is reused while only the code changes) ...
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c requirements.lock ".[serve]" \
    && python -c "import sys, ihcflow.serving.app; assert 'torch' not in sys.modules"
# ... then the model, checked by loading it exactly as the server will.
COPY models/model.onnx models/model.json models/MODEL_CARD.md /models/
RUN python -m ihcflow.serving --model-dir /models --check
# ... and the nuclei segmentation model (POST /segment), loaded the same way.
COPY models/segmentation/model.onnx models/segmentation/model.json \
     models/segmentation/MODEL_CARD.md /models/segmentation/
RUN python -c "from ihcflow.segmentation.model_format import SegModel as M; M.load('/models/segmentation')"

# --- runtime: the venv and the model, nothing else ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ihcflow-serve" \
      org.opencontainers.image.description="IHC image classifier: the registered ONNX model over HTTP" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 ihcflow \
    && useradd --system --uid 10001 --gid ihcflow --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ihcflow \
    && mkdir -p /var/log/ihcflow \
    && chown ihcflow:ihcflow /var/log/ihcflow
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /models /app/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IHCFLOW_MODEL_DIR=/app/models \
    IHCFLOW_SEGMENTATION_MODEL_DIR=/app/models/segmentation \
    IHCFLOW_LOG_DIR=/var/log/ihcflow/predictions \
    IHCFLOW_HOST=0.0.0.0 \
    IHCFLOW_PORT=8000
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Prediction logs go to /var/log/ihcflow/predictions: mount a volume on /var/log/ihcflow to
# keep them for drift monitoring (deploy/compose.yaml and deploy/k8s do).
# No curl in the slim image: the check is a few lines of standard-library Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "ihcflow.serving.healthcheck", "/readyz"]
ENTRYPOINT ["python", "-m", "ihcflow.serving"]
