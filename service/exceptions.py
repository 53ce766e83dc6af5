"""The scoring core's errors: plain exceptions with a stable `code` and a message for the client, no HTTP status.

The core (service/scoring.py), the registry and the batch CLI raise them; the HTTP status each one gets is decided in
one place, `service.errors.STATUS`. Imports nothing, so every layer can use it.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal the client can act on: `code` is stable, the message says what was wrong."""

    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UnknownModel(ServiceError, LookupError):
    code = "unknown_model"


class NotReady(ServiceError):
    """The models are not loaded (start-up, shutdown) or the model's worker stopped."""

    code = "not_ready"


class Overloaded(ServiceError):
    """More work waiting than the service admits; the client should retry shortly."""

    code = "overloaded"


class NoTokens(ServiceError, ValueError):
    """A text with nothing left to score after cleaning (only whitespace or markup)."""

    code = "no_tokens"


class TextTooLong(ServiceError):
    code = "text_too_large"


class BatchTooLarge(ServiceError):
    code = "batch_too_large"


class TooManyTokens(ServiceError):
    """More tokens than the model reads, where the client asked not to truncate."""

    code = "too_many_tokens"


class ClientGone(ServiceError):
    """The client left before its answer was ready; nobody reads it (counted as nginx's 499)."""

    code = "client_closed_request"
