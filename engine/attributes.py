"""CRM attributes of known customers: what the bank knows, for rules to read as `customer.*`.

Set one customer at a time with `PUT /v1/profiles/{id}/attributes` or in bulk with
`ringback import FILE.jsonl`. PUT replaces the whole set (the CRM is the source of
truth). Attributes live inside the profile value, so ingest reads them for free.
Only what decisions need: no names, no contact details, no balances.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from msgspec import Meta, Struct

from engine import keys
from engine.appkeys import SETTINGS, STORE
from engine.bodies import read_json_body
from engine.errors import BadRequest, UnsupportedMedia
from engine.http_errors import json_response
from engine.identity import CUSTOMER_ID_RE, customer_id_from_path
from engine.security import require_api_token
from engine.store import Store

__all__ = ["CustomerAttributes", "handle_attributes_put", "register"]

Code = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class CustomerAttributes(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The attributes rules may use; unknown keys are refused (data minimisation)."""

    products_held: Annotated[list[Code], Meta(max_length=50)] = []
    value_tier: Literal["standard", "vip", "private"] = "standard"
    segment: Code | None = None
    consent_call: bool = False  # a callback needs this to be true
    do_not_call: bool = False
    branch: Code | None = None
    language: Annotated[str, Meta(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] | None = None


class ImportLine(Struct, forbid_unknown_fields=True):
    customer_id: Annotated[str, Meta(pattern=CUSTOMER_ID_RE.pattern)]
    attributes: CustomerAttributes


_attrs_decoder = msgspec.json.Decoder(CustomerAttributes)
_line_decoder = msgspec.json.Decoder(ImportLine)


def _path_of(exc: msgspec.ValidationError) -> tuple[str, str]:
    message, sep, where = str(exc).rpartition(" - at `")
    return (message, where.rstrip("`")) if sep else (str(exc), "$")


def attributes_doc(attrs: CustomerAttributes) -> dict[str, Any]:
    """All fields, defaults included: rules see `consent_call: false`, not unknown."""
    return msgspec.structs.asdict(attrs)


async def store_attributes(store: Store, customer_id: str, attrs: CustomerAttributes) -> bool:
    """Write attributes; True if the customer's profile already existed."""
    created = await store.fcall(
        "rb_set_attrs",
        keys.profile_keys(keys.customer_prefix(customer_id)),
        [msgspec.json.encode(attributes_doc(attrs))],
    )
    return bool(int(created))


async def handle_attributes_put(request: web.Request) -> web.Response:
    require_api_token(request.app[SETTINGS], request)
    customer_id = customer_id_from_path(request)
    if request.content_type != "application/json":
        raise UnsupportedMedia("unsupported_media_type", "send application/json")
    body = await read_json_body(request, request.app[SETTINGS].limits.max_body_bytes)
    try:
        attrs = _attrs_decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, path = _path_of(exc)
        raise BadRequest("invalid_attributes", message, path) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest("invalid_json", f"body is not valid JSON: {exc}", "$") from exc
    existed = await store_attributes(request.app[STORE], customer_id, attrs)
    return json_response(
        {"customer_id": customer_id, "attributes": attributes_doc(attrs), "created": not existed}
    )


def validate_import(path: Path) -> tuple[list[ImportLine], list[str]]:
    """Every line checked before anything is written: `file:line: message at path`."""
    good: list[ImportLine] = []
    errors: list[str] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                good.append(_line_decoder.decode(raw))
            except msgspec.ValidationError as exc:
                message, where = _path_of(exc)
                errors.append(f"{path}:{lineno}: {message} at {where}")
            except msgspec.DecodeError as exc:
                errors.append(f"{path}:{lineno}: not valid JSON: {exc}")
    return good, errors


async def import_file(store: Store, lines: list[ImportLine], concurrency: int = 256) -> int:
    """Write validated lines; concurrent calls coalesce into pipelines."""
    done = 0
    for start in range(0, len(lines), concurrency):
        chunk = lines[start : start + concurrency]
        await asyncio.gather(
            *(store_attributes(store, ln.customer_id, ln.attributes) for ln in chunk)
        )
        done += len(chunk)
    return done


def register(sub: argparse._SubParsersAction, name: str) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        name,
        help='load CRM attributes from JSONL ({"customer_id": ..., "attributes": {...}} per line)',
    )
    p.add_argument("file", type=Path)
    p.add_argument(
        "--redis",
        help="Valkey URL (default: REDIS_URL, or the data dir's "
        "embedded Valkey started for the import)",
    )
    p.add_argument("--config")
    p.add_argument("--data-dir", default=".ringback")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import uvloop

    from engine.embedded import EmbeddedValkey
    from engine.metrics import Metrics
    from engine.settings import load_settings

    lines, errors = validate_import(args.file)
    if errors:
        for e in errors[:50]:
            print(e, file=sys.stderr)
        print(
            f"ringback import: {len(errors)} invalid line(s); nothing was imported", file=sys.stderr
        )
        return 1
    settings = load_settings(
        args.config, data_dir=args.data_dir, overrides={"redis_url": args.redis}
    )
    embedded = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedValkey(settings.data_dir / "valkey")
        url = embedded.start()

    async def run() -> int:
        store = Store(url, Metrics())
        try:
            await store.load_library()
            return await import_file(store, lines)
        finally:
            await store.close()

    try:
        count = uvloop.run(run())
    finally:
        if embedded is not None:
            embedded.stop()
    print(f"imported attributes of {count} customer(s)")
    return 0
