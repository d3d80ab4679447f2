"""Errors of the online model service.

Every error a client can cause is an :class:`APIError` with a 4xx status and a message that
names the problem (the feature, the instance index, the limit, the model or version). The app
turns it into ``{"error": message}`` with that status, as TensorFlow Serving does.
"""

from __future__ import annotations


class APIError(Exception):
    """An error answered to the client: ``status`` and a message naming the problem."""

    status = 400

    def __init__(self, message: str, status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}


class BadRequest(APIError):
    """Malformed JSON, a request body of the wrong shape, a missing feature or a wrong type."""

    status = 400


class Unauthorized(APIError):
    """The bearer token is missing or wrong."""

    status = 401

    def __init__(self, message: str = "missing or invalid bearer token"):
        super().__init__(message, headers={"www-authenticate": 'Bearer realm="airflow-ml"'})


class NotFound(APIError):
    """An unknown path, model or version."""

    status = 404


class MethodNotAllowed(APIError):
    status = 405


class PayloadTooLarge(APIError):
    """The request body is larger than ``--max-body-bytes``."""

    status = 413


class UnsupportedMediaType(APIError):
    status = 415


class Unavailable(APIError):
    """A configured model has no version loaded yet (the registry has none, or loading failed)."""

    status = 503

    def __init__(self, message: str):
        super().__init__(message, headers={"retry-after": "1"})


class ModelLoadError(Exception):
    """A bundle could not be fetched, verified, loaded or warmed up. The old version keeps serving."""
