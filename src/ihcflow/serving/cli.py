"""``ihcflow serve``: run the model server with uvicorn.

Flags override ``IHCFLOW_*`` environment variables, which override the defaults in
:class:`~ihcflow.serving.settings.Settings`. The model and the log folder are checked before
the server starts, so a wrong path fails at once with a message instead of a pod that never
gets ready.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ihcflow.serving.settings import Settings, parse_size

DESCRIPTION = (
    "Serve the registered model (models/model.onnx + model.json) over HTTP: POST /predict, "
    "GET /healthz, /readyz, /metrics, /docs. The bearer token, if any, comes from "
    "IHCFLOW_TOKEN or IHCFLOW_TOKEN_FILE (never a flag)."
)
FLAGS = (
    "model_dir",
    "log_dir",
    "host",
    "port",
    "workers",
    "threads",
    "concurrency",
    "max_bytes",
    "max_pixels",
    "max_files",
    "min_side",
    "no_auth",
    "log_images",
    "log_embedding",
    "log_fsync",
)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    env = "(env IHCFLOW_{})"
    p.add_argument(
        "--model-dir",
        type=Path,
        help=f"model.onnx + model.json {env.format('MODEL_DIR')}; default models",
    )
    p.add_argument(
        "--log-dir",
        type=Path,
        help=f"prediction log folder {env.format('LOG_DIR')}; default logs/predictions",
    )
    p.add_argument("--host", help=f"bind address {env.format('HOST')}; default 127.0.0.1")
    p.add_argument("--port", type=int, help=f"{env.format('PORT')}; default 8000")
    p.add_argument(
        "--workers", type=int, help=f"uvicorn processes {env.format('WORKERS')}; default 1"
    )
    p.add_argument(
        "--threads",
        type=int,
        help=f"ONNX Runtime threads per inference, 0 = CPUs {env.format('THREADS')}",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help=f"requests processed at once, 0 = CPUs {env.format('CONCURRENCY')}",
    )
    p.add_argument(
        "--max-bytes", type=parse_size, help=f"per file, e.g. 20M {env.format('MAX_BYTES')}"
    )
    p.add_argument("--max-pixels", type=int, help=f"per image {env.format('MAX_PIXELS')}")
    p.add_argument("--max-files", type=int, help=f"per request {env.format('MAX_FILES')}")
    p.add_argument(
        "--min-side",
        type=int,
        help=f"px: narrower or lower images are refused {env.format('MIN_SIDE')}; default 16",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        default=None,
        help="serve /predict without a token even if IHCFLOW_TOKEN is set but empty "
        f"{env.format('NO_AUTH')}",
    )
    p.add_argument(
        "--log-images",
        action=argparse.BooleanOptionalAction,
        help=f"log uploads as base64 {env.format('LOG_IMAGES')}; default off",
    )
    p.add_argument(
        "--log-embedding",
        action=argparse.BooleanOptionalAction,
        help=f"log the embedding {env.format('LOG_EMBEDDING')}; default on",
    )
    p.add_argument(
        "--log-fsync",
        action=argparse.BooleanOptionalAction,
        help=f"fsync every log line {env.format('LOG_FSYNC')}; default off",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--check", action="store_true", help="load the model, print it and exit")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``ihcflow`` command's subparsers."""
    parser = subparsers.add_parser(
        "serve", help="serve the registered model over HTTP", description=DESCRIPTION
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    return Settings.from_env(environ, **{k: getattr(args, k, None) for k in FLAGS})


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ihcflow.images.prepare import tune_malloc
    from ihcflow.prediction_log import PredictionLog
    from ihcflow.serving.app import create_app
    from ihcflow.serving.model import ServedModel
    from ihcflow.serving.observability import configure_logging

    settings = settings_from_args(args)
    model = ServedModel.load(settings.model_dir, threads=settings.intra_op_threads)
    if args.check:
        print(
            f"{model.name} {model.version}: {len(model.class_names)} classes "
            f"{model.class_names}, input {model.input_size} px, embedding {model.embed_dim}"
        )
        return 0
    try:
        PredictionLog(settings.log_dir).close()  # fails now if the folder is not writable
    except OSError as exc:
        raise RuntimeError(f"{settings.log_dir}: cannot write the prediction log: {exc}") from None
    configure_logging(args.log_level)
    tune_malloc()  # one image after another: keep freed buffers instead of unmapping them
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "log_level": args.log_level,
        "access_log": False,  # ours is structured (ihcflow.serving.access)
        "server_header": False,
        "timeout_graceful_shutdown": 20,  # finish requests in flight on SIGTERM
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings, model=model), **options)
    else:  # each worker process builds its app from the environment
        del model
        os.environ.update(settings.to_env())
        uvicorn.run(
            "ihcflow.serving.app:create_app_from_env",
            factory=True,
            workers=settings.workers,
            **options,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ihcflow serve", description=DESCRIPTION)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"ihcflow serve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
