"""Errors a caller can act on: each maps to one HTTP status and a machine-readable `code`."""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 400

    def __init__(self, code: str, message: str, **details: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        # "error" holds the human sentence, as the Open Inference Protocol's error body does.
        return {"error": self.message, "code": self.code, **({"details": self.details} if self.details else {})}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class ModelFailed(ApiError):
    status = 500


class Unavailable(ApiError):
    status = 503


class TimedOut(ApiError):
    status = 504
