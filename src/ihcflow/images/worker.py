"""The per-file half of the ``preprocess`` stage, run in its worker processes.

:func:`process_file` turns one raw image into the model-ready PNG and its record (drift
features, acquisition properties, what was applied); :func:`run_task` also writes the PNG into
the output folder and publishes it in the cache. Kept apart from :mod:`ihcflow.preprocess`
(pandas, the tables) so that a worker process imports only the image code: ~0.2 s to start
instead of ~0.5 s, which is the whole run time of a few hundred small images.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import cv2

from ihcflow.errors import PipelineError
from ihcflow.files import sha256_bytes
from ihcflow.images.codec import ImageError, encode_png
from ihcflow.images.prepare import ImageParams, prepare_image, tune_malloc

PNG_LEVEL = 1  # zlib level of the output PNGs, with fast filters (codec.png_params)


class PreprocessError(PipelineError):
    """An image could not be preprocessed; the message names the file."""


@dataclass(frozen=True)
class Task:
    source: str  # the raw image file
    sha256: str  # its content hash from the manifest
    out: str  # where the PNG goes (inside the output folder being built)
    cache: str | None  # the cache entry's PNG, None without a cache


def image_params(params: ImageParams) -> ImageParams:
    """The pixel params alone, as a plain :class:`ImageParams` (a subclass, such as the
    stage's ``PreprocessParams``, would make a worker import its module to unpickle it)."""
    return ImageParams(**{f.name: getattr(params, f.name) for f in fields(ImageParams)})


def process_file(source: str | Path, sha256: str, params: ImageParams) -> tuple[bytes, dict]:
    """Decode one raw file and return its PNG bytes and record (features, flags, hash)."""
    data = Path(source).read_bytes()
    actual = sha256_bytes(data)
    if actual != sha256:
        raise PreprocessError(
            f"{source}: content changed since validation (sha256 {actual[:12]}... but the "
            f"manifest says {sha256[:12]}...); re-run the validate stage"
        )
    prepared = prepare_image(data, str(source), params)
    png = encode_png(prepared.image, PNG_LEVEL, fast=True)
    record = {
        "features": prepared.features,
        "acquisition": prepared.acquisition,
        "corrected": int(prepared.applied["corrected"]),
        "stain_normalized": int(prepared.applied["stain_normalized"]),
        "processed_sha256": sha256_bytes(png),
        "png_bytes": len(png),
    }
    return png, record


def link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` as ``dst``, or copy it where links cannot be made."""
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links
        shutil.copyfile(src, dst)


def publish(src: str, dst: str) -> None:
    """Make ``dst`` a complete copy of ``src`` in one rename (a hard link where possible)."""
    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        link_or_copy(src, str(tmp))
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def run_task(task: Task, params: ImageParams) -> dict:
    try:
        png, record = process_file(task.source, task.sha256, params)
    except PreprocessError:
        raise
    except ImageError as exc:  # its message already starts with the file name
        raise PreprocessError(str(exc)) from None
    except Exception as exc:  # re-raised picklable, with the file name, across processes
        raise PreprocessError(f"{task.source}: {type(exc).__name__}: {exc}") from None
    with open(task.out, "xb") as fh:  # the output folder is private until it is swapped in
        fh.write(png)
    if task.cache is not None:
        publish(task.out, task.cache)
    return record


_WORKER_PARAMS: list[ImageParams] = []  # the params of this worker process


def init_worker(params: ImageParams) -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe
    tune_malloc()
    _WORKER_PARAMS[:] = [params]


def run_chunk(tasks: Sequence[Task]) -> list[tuple[str, dict]]:
    return [(t.sha256, run_task(t, _WORKER_PARAMS[0])) for t in tasks]
