"""`PUT /v1/profiles/{id}/attributes`: a bank system sets a customer's CRM attributes."""

from __future__ import annotations

from aiohttp import web

from engine.core.errors import UnsupportedMedia
from engine.http.errors import json_response
from engine.http.security import require_api_token
from engine.http.state import SETTINGS, STORE
from engine.ingest.bodies import read_json_body
from engine.ingest.identity import customer_id_from_path
from engine.profile.attributes import attributes_doc, decode_attributes, store_attributes
from engine.profile.phones import phone_hash_key

__all__ = ["handle_attributes_put"]


async def handle_attributes_put(request: web.Request) -> web.Response:
    require_api_token(request.app[SETTINGS], request)
    customer_id = customer_id_from_path(request)
    if request.content_type != "application/json":
        raise UnsupportedMedia("unsupported_media_type", "send application/json")
    body = await read_json_body(request, request.app[SETTINGS].limits.max_body_bytes)
    attrs = decode_attributes(body)
    settings = request.app[SETTINGS]
    existed = await store_attributes(
        request.app[STORE], customer_id, attrs, phone_key=phone_hash_key(settings)
    )
    return json_response(
        {"customer_id": customer_id, "attributes": attributes_doc(attrs), "created": not existed}
    )
