"""CRM attributes of known customers: what the bank knows, for rules to read as `customer.*`.

Set one customer at a time with `PUT /v1/profiles/{id}/attributes`
(engine/http/attributes.py) or in bulk with `ringback import FILE.jsonl`
(engine/cli/imports.py). PUT replaces the whole set (the CRM is the source of truth).
Attributes live inside the profile value, so ingest reads them for free.
Only what decisions need: no names, no addresses; `balance` (the total of the
customer's balances) because the customer-value score weighs it. The one contact
detail accepted, `phone` (E.164), is never stored: only its keyed hash, as the index
an inbound call finds the customer by (engine/profile/phones.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from engine.ingest.bodies import decode_json, validation_error
from engine.ingest.identity import CUSTOMER_ID_RE
from engine.profile.phones import PHONE_REF_FIELD, Phone, phone_ref, stored_phone_ref
from engine.profile.phones import update_phone_index as _update_phone_index
from engine.valkey import keys
from engine.valkey.store import Store

__all__ = [
    "CustomerAttributes",
    "ImportLine",
    "attributes_doc",
    "decode_attributes",
    "import_file",
    "store_attributes",
    "validate_import",
]

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
    balance: Annotated[float, Meta(ge=0, le=1e12)] | None = None  # total of all balances
    # For the inbound screen-pop only: never stored, never shown (see `attributes_doc`).
    phone: Phone | None = None


class ImportLine(Struct, forbid_unknown_fields=True):
    customer_id: Annotated[str, Meta(pattern=CUSTOMER_ID_RE.pattern)]
    attributes: CustomerAttributes


_line_decoder = msgspec.json.Decoder(ImportLine)


def attributes_doc(attrs: CustomerAttributes) -> dict[str, Any]:
    """All fields, defaults included: rules see `consent_call: false`, not unknown.
    Never the phone number (what is stored and what answers show)."""
    doc = msgspec.structs.asdict(attrs)
    del doc["phone"]
    return doc


async def store_attributes(
    store: Store,
    customer_id: str,
    attrs: CustomerAttributes,
    *,
    phone_key: bytes | None = None,
) -> bool:
    """Write attributes; True if the customer's profile already existed.

    The phone number becomes its keyed hash (`phone_key`, engine/profile/phones.py):
    the stored attributes name the hash, the customer joins the number's index set
    (shared numbers hold several customers), and leaves the set of a number they no
    longer have (the others in it stay)."""
    doc = attributes_doc(attrs)
    new_ref = None
    if attrs.phone is not None:
        if phone_key is None:
            raise ValueError("a phone number needs the phone hash key")
        new_ref = doc[PHONE_REF_FIELD] = phone_ref(phone_key, attrs.phone)
    old_ref = await stored_phone_ref(store, customer_id)
    created = await store.fcall(
        "rb_set_attrs",
        keys.profile_keys(keys.customer_prefix(customer_id)),
        [msgspec.json.encode(doc)],
    )
    if old_ref or new_ref:
        await _update_phone_index(store, customer_id, old_ref, new_ref)
    return bool(int(created))


def decode_attributes(body: bytes) -> CustomerAttributes:
    """A PUT body, validated: 400 `invalid_attributes` with the JSON path at fault."""
    return decode_json(body, CustomerAttributes, "invalid_attributes")


def validate_import(
    path: Path, on_line: Callable[[int], None] | None = None
) -> tuple[list[ImportLine], list[str]]:
    """Every line checked before anything is written: `file:line: message at path`."""
    good: list[ImportLine] = []
    errors: list[str] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if on_line is not None:
                on_line(1)
            if not raw.strip():
                continue
            try:
                good.append(_line_decoder.decode(raw))
            except msgspec.ValidationError as exc:
                message, where = validation_error(exc)
                errors.append(f"{path}:{lineno}: {message} at {where}")
            except msgspec.DecodeError as exc:
                errors.append(f"{path}:{lineno}: not valid JSON: {exc}")
    return good, errors


# An interrupted import's checkpoint is kept this long (a week: over a long weekend).
CHECKPOINT_TTL_S = 7 * 86400


def file_digest(path: Path) -> str:
    """What names an import's checkpoint: the file's content, so a changed file (even
    under the same name) starts over, and the same file resumes from anywhere."""
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def resume_point(store: Store, digest: str) -> int:
    """Valid lines of this file already written by an interrupted import (0: none)."""
    done = await store.call("GET", keys.import_checkpoint(digest))
    return int(done or 0)


def check_import(path: Path, on_line: Callable[[int], None] | None = None) -> tuple[int, list[str]]:
    """`validate_import` without keeping the lines: (valid lines, errors). A file of
    millions of rows is checked in constant memory, then `read_import` streams it."""
    valid = 0
    errors: list[str] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if on_line is not None:
                on_line(1)
            if not raw.strip():
                continue
            try:
                _line_decoder.decode(raw)
                valid += 1
            except msgspec.ValidationError as exc:
                message, where = validation_error(exc)
                errors.append(f"{path}:{lineno}: {message} at {where}")
            except msgspec.DecodeError as exc:
                errors.append(f"{path}:{lineno}: not valid JSON: {exc}")
    return valid, errors


def read_import(path: Path) -> Iterator[ImportLine]:
    """The lines of a file `check_import` found valid, decoded one at a time."""
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                yield _line_decoder.decode(raw)


async def import_file(
    store: Store,
    lines: Iterable[ImportLine],
    concurrency: int = 256,
    *,
    digest: str | None = None,
    start: int = 0,
    on_progress: Callable[[int], None] | None = None,
    phone_key: bytes | None = None,
) -> int:
    """Write validated lines from `start`; concurrent calls coalesce into pipelines.

    With `digest`, a checkpoint (the count of lines written) is saved after each chunk
    (every earlier chunk is written by then: chunks are awaited in order), so an
    interrupted import resumes at `resume_point`; it is deleted at the end. Writing
    attributes replaces them, so a chunk written twice (interrupted before its
    checkpoint) changes nothing. `phone_key` hashes the lines' phone numbers
    (engine/profile/phones.py). Returns the lines written by this call."""
    done = 0
    checkpoint = keys.import_checkpoint(digest) if digest else None
    rest = itertools.islice(iter(lines), start, None)
    while chunk := list(itertools.islice(rest, concurrency)):
        await asyncio.gather(
            *(
                store_attributes(store, ln.customer_id, ln.attributes, phone_key=phone_key)
                for ln in chunk
            )
        )
        done += len(chunk)
        if checkpoint is not None:
            await store.call("SET", checkpoint, start + done, "EX", CHECKPOINT_TTL_S, writes=True)
        if on_progress is not None:
            on_progress(len(chunk))
    if checkpoint is not None:
        await store.call("DEL", checkpoint, writes=True)
    return done
