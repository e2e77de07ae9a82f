"""Errors the local QStash server answers with, as QStash does: ``{"error": "..."}``."""

from __future__ import annotations


class ApiError(Exception):
    """An error with the HTTP status QStash uses for it."""

    status_code = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status_code = 400


class Unauthorized(ApiError):
    status_code = 401


class NotFound(ApiError):
    status_code = 404


class PayloadTooLarge(ApiError):
    status_code = 413


class PreconditionFailed(ApiError):
    status_code = 412


class TooManyRequests(ApiError):
    status_code = 429
