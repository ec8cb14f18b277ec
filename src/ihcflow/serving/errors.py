"""Client errors: a status, a machine-readable code and a message that names the file."""

from __future__ import annotations

from ihcflow.images.codec import ImageError

# ImageError.reason -> HTTP status
IMAGE_ERROR_STATUS = {
    "empty": 400,
    "not_an_image": 415,
    "unsupported_format": 415,
    "unsupported_mode": 415,
    "corrupt": 422,
    "too_small": 422,
    "no_content": 422,
    "too_large": 413,
}


class ApiError(Exception):
    """Answered as ``{"error": code, "detail": message, "file": name, "request_id": ...}``."""

    def __init__(self, status: int, code: str, detail: str, file: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.file = file

    @classmethod
    def from_image_error(cls, exc: ImageError, file: str | None) -> ApiError:
        return cls(IMAGE_ERROR_STATUS.get(exc.reason, 422), exc.reason, str(exc), file)
