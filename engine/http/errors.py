"""The one place where errors become HTTP responses.

Every refusal is `{"error": {"code", "message", "path"}}` with a stable `code`; a
Valkey outage is a 503 with Retry-After (the snippet keeps the batch and retries);
an unexpected exception is logged with its traceback and the client sees only
`{"error": {"code": "internal"}}` — never a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from engine.core.errors import ClientError, RateLimited, StoreUnavailable

__all__ = ["error_middleware", "error_response", "json_response"]

log = logging.getLogger("ringback.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(
    status: int,
    code: str,
    message: str,
    path: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"code": code, "message": message, "path": path}}
    return json_response(body, status=status, headers=headers)


class _ClosingResponse(web.Response):
    """A response after which the connection is closed at once, without lingering.

    aiohttp normally reads (and discards) the rest of an unread request body for up
    to 10 s after answering; for a body we refused as a decompression bomb that is
    pointless work, so once this response is written the connection is force-closed
    (which is what makes aiohttp skip its lingering read).
    """

    def __init__(self, request: web.BaseRequest, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._closing_request = request
        self.force_close()  # `Connection: close`: the client knows not to reuse it

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        self._closing_request.protocol.force_close()


def _closing_error_response(request: web.BaseRequest, exc: ClientError) -> web.Response:
    body = {"error": {"code": exc.code, "message": exc.message, "path": exc.path}}
    return _ClosingResponse(
        request, body=orjson.dumps(body), status=exc.status, content_type="application/json"
    )


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def make_error_middleware(on_reject: Callable[[str], None]) -> Any:
    """Build the middleware; `on_reject(code)` counts refusals in metrics."""

    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RateLimited as exc:
            on_reject(exc.code)
            return error_response(
                exc.status,
                exc.code,
                exc.message,
                exc.path,
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        except ClientError as exc:
            on_reject(exc.code)
            if getattr(exc, "close_connection", False):
                return _closing_error_response(request, exc)
            return error_response(exc.status, exc.code, exc.message, exc.path)
        except web.RequestPayloadError as exc:
            # aiohttp could not read the body (broken chunked encoding, short body):
            # the client's fault, whichever handler was reading.
            on_reject("invalid_body")
            return error_response(400, "invalid_body", f"the request body is malformed: {exc}", "$")
        except ConnectionResetError:
            raise  # the client went away mid-request: nobody to answer, nothing to log
        except RecursionError:
            # A JSON decoder met a body nested ~1000 deep on a route that does not read
            # it through engine.ingest.bodies.read_json_body: the client's fault, not a 500.
            log.warning("too deeply nested body on %s %s", request.method, request.path)
            on_reject("too_deeply_nested")
            return error_response(400, "too_deeply_nested", "the JSON nests too deeply", "$")
        except StoreUnavailable as exc:
            on_reject("store_unavailable")
            log.warning("store unavailable on %s %s: %s", request.method, request.path, exc)
            return error_response(
                503,
                "store_unavailable",
                "the profile store is unavailable; retry later",
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
            on_reject(code)
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return error_response(exc.status, code, exc.reason, headers=headers)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            on_reject("internal")
            return error_response(500, "internal", "internal error")

    return error_middleware


error_middleware = make_error_middleware(lambda code: None)
