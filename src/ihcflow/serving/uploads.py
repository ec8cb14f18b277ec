"""Read the images of a ``/predict`` request within the limits, without buffering unbounded data.

Two ways to send images: ``multipart/form-data`` with one or more file fields (any field name;
``files`` in the docs), or the bytes of one image as the body with ``Content-Type: image/...``
or ``application/octet-stream``. Limits, all checked before any image is decoded:

- ``Content-Length`` above the body limit is refused before a byte is read;
- the body is counted as it streams in (a chunked upload has no length to check);
- each file is counted as it is parsed and refused as soon as it passes ``max_bytes``;
- the ``max_files + 1``-th file part is refused as soon as its headers arrive.

Multipart files over 1 MiB are spooled to a temporary file (Starlette's parser), so memory
stays bounded whatever the number of requests in flight.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import DEFAULT_MAX_HEADER_SIZE
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ihcflow.serving.errors import ApiError

RAW_TYPES = ("image/", "application/octet-stream")
MAX_FIELDS = 16  # non-file form fields accepted (and ignored)
MAX_FIELD_BYTES = 16 << 10
MAX_PART_HEADER = DEFAULT_MAX_HEADER_SIZE  # bytes per part header line (python-multipart's)
MAX_FILENAME = 4000  # characters: what fits in that header with the rest of the line


@dataclass(frozen=True)
class Upload:
    """One uploaded image; its bytes are read by the worker thread that decodes it."""

    filename: str | None
    content: bytes | IO[bytes]

    @property
    def source(self) -> str:
        return self.filename or "request body"

    def read(self) -> bytes:
        if isinstance(self.content, bytes):
            return self.content
        self.content.seek(0)
        return self.content.read()


def _too_large(what: str, limit: int, file: str | None = None) -> ApiError:
    return ApiError(413, "too_large", f"{what} is larger than the limit of {limit} bytes", file)


class _ImageParts(MultiPartParser):
    """Starlette's parser with a byte limit per file part and our own file count limit."""

    def __init__(
        self,
        headers: Headers,
        stream: AsyncIterator[bytes],
        *,
        max_files: int,
        max_bytes: int,
    ) -> None:
        super().__init__(
            headers,
            stream,  # type: ignore[arg-type]
            max_files=math.inf,
            max_fields=MAX_FIELDS,
            max_part_size=MAX_FIELD_BYTES,
        )
        self.limit_files = max_files
        self.limit_bytes = max_bytes
        self.part_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self.part_bytes = 0

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        if self._current_part.file is not None and self._current_files > self.limit_files:
            raise ApiError(
                413,
                "too_many_files",
                f"more than {self.limit_files} files in one request; send at most "
                f"{self.limit_files} images per request",
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self._current_part.file
        if upload is not None:
            self.part_bytes += end - start
            if self.part_bytes > self.limit_bytes:
                name = upload.filename or "file"
                raise _too_large(name, self.limit_bytes, upload.filename)
        super().on_part_data(data, start, end)


def _multipart_error(exc: MultiPartException) -> ApiError:
    """A 400 saying what is wrong: Starlette reports every parser error as "Invalid multipart
    data."; the parser's own reason is its cause."""
    cause = exc.__cause__
    if isinstance(cause, MultipartParseError) and "header size" in str(cause):
        return ApiError(
            400,
            "header_too_long",
            f"a multipart part header is longer than {MAX_PART_HEADER} bytes: is the file "
            f"name too long? Send names under {MAX_FILENAME} characters",
        )
    detail = f"{exc.message} ({cause})" if cause is not None else exc.message
    return ApiError(400, "bad_multipart", f"malformed multipart body: {detail}")


async def _counted(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large("request body", limit)
        yield chunk


@contextlib.asynccontextmanager
async def receive_uploads(
    request: Request, *, max_files: int, max_bytes: int
) -> AsyncIterator[list[Upload]]:
    """The uploaded images, or an :class:`ApiError` (400/413/415) saying what is wrong.

    Multipart files stay in their spooled temporary files until the block ends.
    """
    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";", 1)[0].strip().lower()
    multipart = mime == "multipart/form-data"
    limit = max_files * (max_bytes + 4096) + 65536 if multipart else max_bytes
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "bad_request", f"invalid Content-Length {length!r}")
        if int(length) > limit:
            what = "request body" if multipart else "image"
            raise ApiError(
                413, "too_large", f"{what} of {length} bytes is larger than the limit of {limit}"
            )
        if int(length) == 0:
            raise ApiError(400, "empty", "request body is empty: send one or more images")
    if multipart:
        async with aclosing(_counted(request, limit)) as stream:
            parser = _ImageParts(request.headers, stream, max_files=max_files, max_bytes=max_bytes)
            try:
                form = await parser.parse()
            except MultiPartException as exc:
                raise _multipart_error(exc) from None
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise ApiError(
                    400,
                    "no_image",
                    "no file in the form: send images as file fields (files=@x.png)",
                )
            yield [Upload(f.filename or None, f.file) for f in files]
        finally:
            await form.close()
        return
    if mime.startswith(RAW_TYPES):
        data = bytearray()
        async with aclosing(_counted(request, limit)) as stream:
            async for chunk in stream:
                data.extend(chunk)
        if not data:
            raise ApiError(400, "empty", "request body is empty: send one or more images")
        yield [Upload(None, bytes(data))]
        return
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type {mime or 'missing'}: send multipart/form-data with file fields, "
        "or one image as the body with Content-Type image/png, image/jpeg or image/tiff",
    )
