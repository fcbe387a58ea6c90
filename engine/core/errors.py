"""Every error Ringback raises on purpose, in one tree.

    RingbackError
    ├── ConfigError            a config file is wrong; names the file and the key
    ├── StoreUnavailable       Valkey cannot be reached -> 503 + Retry-After
    └── ClientError            the caller sent something we refuse (status, code, path)
        ├── BadRequest         400  invalid_json, invalid_event, timestamp_out_of_range, ...
        ├── Unauthorized       401  invalid_identity, missing_credentials, invalid_credentials
        ├── Forbidden          403  origin_not_allowed, identity_site_mismatch
        ├── NotFound           404  unknown_site, not_found
        ├── PayloadTooLarge    413  payload_too_large
        ├── UnsupportedMedia   415  unsupported_media_type
        └── RateLimited        429  rate_limited (+ Retry-After)

Only the HTTP layer (`engine.http.errors`) turns these into responses, so business
code raises meaning, not status codes. Anything else that escapes a handler is a
bug: it is logged with its traceback and the client gets a bare 500 with no details.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ClientError",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "Gone",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RingbackError",
    "StoreUnavailable",
    "Unauthorized",
    "UnsupportedEncoding",
    "UnsupportedMedia",
]


class RingbackError(Exception):
    """Base of every deliberate Ringback error."""


class ConfigError(RingbackError):
    """A configuration problem, always naming where it is (`file: key: problem`)."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        super().__init__(f"{source}: {key}: {message}")


class StoreUnavailable(RingbackError):
    """Valkey did not answer; nothing was written, the client should retry later."""

    retry_after_s = 2


class ClientError(RingbackError):
    """A request we refuse. `code` is stable and machine-readable; `path` is a JSON path."""

    status = 400

    def __init__(self, code: str, message: str, path: str | None = None) -> None:
        self.code = code
        self.message = message
        self.path = path
        super().__init__(f"{code}: {message}" + (f" at {path}" if path else ""))


class BadRequest(ClientError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class Forbidden(ClientError):
    status = 403


class NotFound(ClientError):
    status = 404


class Conflict(ClientError):
    status = 409


class Gone(ClientError):
    status = 410


class PayloadTooLarge(ClientError):
    status = 413


class UnsupportedEncoding(ClientError):
    """A Content-Encoding we do not inflate (415)."""

    status = 415


class UnsupportedMedia(ClientError):
    status = 415


class RateLimited(ClientError):
    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__("rate_limited", message)
        self.retry_after_s = max(1, retry_after_s)
