"""Reading request bodies that may be hostile: compressed, oversized or deeply nested.

aiohttp is told not to decompress request bodies (`auto_decompress=False` where the
server is built): its parser would inflate a whole gzip bomb in one go inside the
event loop, and keep inflating the rest while it lingers after our 413. Here we
inflate ourselves, in bounded steps, stopping as soon as the inflated size passes
the cap:

- `Content-Encoding` absent or `identity`: the raw body, capped.
- `gzip` / `x-gzip` / `deflate` (zlib-wrapped or raw): inflated, capped; a body that
  does not inflate cleanly is `400 invalid_encoding`.
- anything else (`br`, `zstd`, stacked codings): `415 unsupported_content_encoding`.

Over the cap is `413 payload_too_large`; when it was the *inflated* size that passed
the cap, the error says so (`BodyTooLarge.close_connection`) and the error layer
closes the connection after answering instead of reading the rest of the body.

JSON nesting is capped too (`MAX_JSON_DEPTH`): no valid body of ours is more than
five levels deep, and msgspec skips unknown fields recursively, so a body nested
~1000 deep would otherwise end in a `RecursionError`. `nesting_overflow` finds a
body nested deeper than the cap with a few C-speed passes over the bytes (no Python
loop per byte); only when it is too deep does a slower scan name the JSON path.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import msgspec
from aiohttp import web

from engine.core.errors import BadRequest, PayloadTooLarge, UnsupportedEncoding

__all__ = [
    "MAX_JSON_DEPTH",
    "BodyTooLarge",
    "UnsupportedEncoding",
    "check_nesting",
    "content_coding",
    "decode_json",
    "nesting_overflow",
    "read_body",
    "read_json_body",
    "read_typed_body",
    "too_deeply_nested",
    "validation_error",
]

# Levels of `{`/`[` a JSON body may nest. A batch needs 5 (batch, events, event,
# props, custom data); the rest is headroom for fields a newer snippet may add.
MAX_JSON_DEPTH = 32

_READ_CHUNK_BYTES = 65536
# Inflate at most this much per step; between steps the event loop runs.
_INFLATE_STEP_BYTES = 65536

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


class BodyTooLarge(PayloadTooLarge):
    """413 for a body that inflated past the cap: answer, then close the connection.

    Reading the rest of such a body would only feed more of the bomb to the socket;
    aiohttp's lingering read (up to 10 s) is skipped for it.
    """

    close_connection = True


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge("payload_too_large", f"bodies are limited to {max_bytes} bytes")


def _decompressor(coding: str, first: bytes) -> zlib._Decompress:
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(_GZIP_WBITS)
    # "deflate" is zlib-wrapped by the RFC, but some clients send raw deflate:
    # a zlib header has compression method 8 and a check sum divisible by 31.
    wrapped = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
    return zlib.decompressobj(_ZLIB_WBITS if wrapped else _RAW_DEFLATE_WBITS)


def content_coding(request: web.BaseRequest) -> str:
    """The request's Content-Encoding, lower case; "" for none or identity.

    Raises `UnsupportedEncoding` for anything we do not inflate.
    """
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return ""
    if coding in ("gzip", "x-gzip", "deflate"):
        return coding
    raise UnsupportedEncoding(
        "unsupported_content_encoding",
        f"Content-Encoding {coding!r} is not supported; send gzip, deflate or no encoding",
        None,
    )


class _Inflater:
    """Inflates a body as its compressed chunks arrive, in capped steps."""

    def __init__(self, coding: str, max_bytes: int) -> None:
        self.coding = coding
        self.max_bytes = max_bytes
        self.inflated_bytes = 0
        self.out: list[bytes] = []
        self._head = b""  # raw deflate or zlib: decided by the first two bytes
        self._inflater: zlib._Decompress | None = None

    def _invalid(self, why: str) -> BadRequest:
        return BadRequest(
            "invalid_encoding", f"the body is not valid {self.coding} data: {why}", "$"
        )

    async def feed(self, compressed: bytes) -> None:
        if self._inflater is None:
            self._head += compressed
            if len(self._head) < 2:
                return
            self._inflater = _decompressor(self.coding, self._head[:2])
            compressed, self._head = self._head, b""
        inflater = self._inflater
        if inflater.eof:
            raise self._invalid("extra bytes after the end")
        pending = compressed
        while True:
            try:
                piece = inflater.decompress(pending, _INFLATE_STEP_BYTES)
            except zlib.error as exc:
                raise self._invalid(str(exc)) from exc
            self.inflated_bytes += len(piece)
            if self.inflated_bytes > self.max_bytes:
                raise BodyTooLarge(
                    "payload_too_large",
                    f"bodies are limited to {self.max_bytes} bytes after decompression",
                )
            self.out.append(piece)
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and len(piece) < _INFLATE_STEP_BYTES):
                return  # this chunk is used up and no output is held back
            await asyncio.sleep(0)  # a large legitimate body: let other requests run

    def result(self) -> bytes:
        if self._inflater is None or not self._inflater.eof:
            raise self._invalid("truncated")
        if self._inflater.unused_data:
            raise self._invalid("extra bytes after the end")
        return b"".join(self.out)


async def read_body(request: web.BaseRequest, max_bytes: int) -> bytes:
    """The request body, inflated if it is gzip/deflate, at most `max_bytes` either way.

    Compressed chunks are inflated as they arrive, so a bomb is refused after its
    first chunk, not after the client has finished sending it.

    Raises `PayloadTooLarge` (413), `BodyTooLarge` (413, close the connection),
    `BadRequest` `invalid_encoding`/`invalid_body` (400) or `UnsupportedEncoding` (415).
    """
    coding = content_coding(request)
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    inflater = _Inflater(coding, max_bytes) if coding else None
    chunks: list[bytes] = []
    raw_bytes = 0
    try:
        while chunk := await request.content.read(_READ_CHUNK_BYTES):
            raw_bytes += len(chunk)
            if raw_bytes > max_bytes:
                raise _too_large(max_bytes)
            if inflater is None:
                chunks.append(chunk)
            else:
                await inflater.feed(chunk)
    except web.HTTPRequestEntityTooLarge as exc:
        raise _too_large(max_bytes) from exc
    except web.RequestPayloadError as exc:
        # A broken chunked encoding, a body shorter than its Content-Length, ...
        raise BadRequest("invalid_body", f"the request body is malformed: {exc}", "$") from exc
    return b"".join(chunks) if inflater is None else inflater.result()


async def read_json_body(
    request: web.BaseRequest, max_bytes: int, max_depth: int = MAX_JSON_DEPTH
) -> bytes:
    """`read_body`, then refuse JSON nested deeper than `max_depth` (`too_deeply_nested`).

    For handlers that decode the bytes themselves (orjson or msgspec): neither a
    compressed body nor a deeply nested one can then end in a 500.
    """
    body = await read_body(request, max_bytes)
    check_nesting(body, max_depth)
    return body


T = TypeVar("T")


def validation_error(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's 'Expected `int`, got `str` - at `$.events[3].props.amount`' as
    (message, JSON path): every refusal names the path at fault.

    >>> validation_error(msgspec.ValidationError("Expected `int`, got `str` - at `$.a[0]`"))
    ('Expected `int`, got `str`', '$.a[0]')
    >>> validation_error(msgspec.ValidationError("Object missing required field `user`"))
    ('Object missing required field `user`', '$')
    """
    message, sep, where = str(exc).rpartition(" - at `")
    return (message, where.rstrip("`")) if sep else (str(exc), "$")


def decode_json(
    raw: bytes, kind: type[T], invalid_code: str, not_json_code: str = "invalid_json"
) -> T:
    """The one way a request body becomes its typed struct (events have their own
    path, engine/ingest/parse.py, for nesting and event times): 400 `invalid_code` with
    the JSON path at fault, or 400 `not_json_code` for bytes that are not JSON (a
    route whose clients already know one code for both keeps it)."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        message, path = validation_error(exc)
        raise BadRequest(invalid_code, message, path) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(not_json_code, f"body is not valid JSON: {exc}", "$") from exc


async def read_typed_body(
    request: web.BaseRequest,
    kind: type[T],
    invalid_code: str,
    max_bytes: int,
    not_json_code: str = "invalid_json",
) -> T:
    """`read_json_body` (capped, inflated, nesting-checked), then `decode_json`."""
    raw = await read_json_body(request, max_bytes)
    return decode_json(raw, kind, invalid_code, not_json_code)


def check_nesting(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise `BadRequest("too_deeply_nested", ...)` naming where `max_depth` is exceeded."""
    path = nesting_overflow(body, max_depth)
    if path is not None:
        raise too_deeply_nested(path, max_depth)


def too_deeply_nested(path: str, max_depth: int = MAX_JSON_DEPTH) -> BadRequest:
    """The 400 for a body nested past `max_depth`, at the JSON path where it was."""
    return BadRequest(
        "too_deeply_nested", f"JSON may nest at most {max_depth} levels of objects/arrays", path
    )


# Keep only brackets and quotes; `{`/`}` become `[`/`]` (only depth matters).
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def nesting_overflow(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """The JSON path of the first container deeper than `max_depth`, or None.

    Cheap for every body: a handful of C-level passes (`translate`, `replace`).
    Malformed JSON is not this function's business (msgspec reports it); a
    malformed body may be reported as shallow here.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return None  # cannot nest deeper than it has brackets (common case)
    text = body
    if b"\\" in text:
        # Escapes are read left to right in pairs: drop `\\` first, then `\"`.
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = text.translate(_BRACKETS_ONLY, _NOT_STRUCTURE)
    if b'"' in skeleton:
        skeleton = skeleton.replace(b'""', b"")  # strings without brackets vanish
        if b'"' in skeleton:  # some string holds brackets: drop every string's content
            skeleton = b"".join(skeleton.split(b'"')[::2])
    # Each pass removes the innermost level: the number of passes is the depth.
    depth = 0
    while b"[]" in skeleton:
        depth += 1
        if depth > max_depth:
            return _path_at_depth(body, max_depth) or "$"
        skeleton = skeleton.replace(b"[]", b"")
    if skeleton.count(b"[") > max_depth:  # that many unclosed brackets: malformed and deep
        return _path_at_depth(body, max_depth) or "$"
    return None


# Past this many tokens the path is not worth the loop time: it is reported as "$".
_PATH_SCAN_MAX_TOKENS = 5000
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{},]')


@dataclass(slots=True)
class _Level:
    """One open container while walking tokens: where we are inside it."""

    is_object: bool
    key: str = ""
    index: int = 0
    expecting_key: bool = True

    def step(self) -> str:
        return f".{self.key}" if self.is_object else f"[{self.index}]"


def _path_at_depth(body: bytes, max_depth: int) -> str | None:
    """Walk the tokens (slow, error path only) to name the container past the cap."""
    stack: list[_Level] = []
    # Bounded: a hostile body could otherwise cost ~20 ms of Python per request here.
    for match in islice(_TOKEN.finditer(body), _PATH_SCAN_MAX_TOKENS):
        tok = match.group()
        first = tok[:1]
        if first == b'"':
            top = stack[-1] if stack else None
            if top is not None and top.is_object and top.expecting_key:
                top.key = tok[1:-1].decode("utf-8", "replace")
                top.expecting_key = False
        elif first in (b"{", b"["):
            if len(stack) == max_depth:
                return "$" + "".join(level.step() for level in stack)
            stack.append(_Level(is_object=first == b"{"))
        elif first in (b"}", b"]"):
            if stack:
                stack.pop()
        elif stack:  # a comma
            if stack[-1].is_object:
                stack[-1].expecting_key = True
            else:
                stack[-1].index += 1
    return None
