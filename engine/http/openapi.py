"""What a route declares, and the OpenAPI document generated from those declarations.

The route table (engine/http/routes.py) is the one source of the HTTP interface: the
app registers its routes from it and `/openapi.json` is built from it here. Paths,
methods, parameters, security, request bodies and answers all come from the table and
its msgspec structs (`msgspec.json.schema_components`), so the document cannot drift
from what the server accepts and answers; only prose (summaries, descriptions) is
written by hand, beside each route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec
from aiohttp import web

from engine import __version__
from engine.http.answers import ErrorBody

__all__ = ["Auth", "Reply", "Route", "build_document"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"\{([^}:]+)")


class Auth(StrEnum):
    """Who may call a route."""

    PUBLIC = "public"  # anyone
    SITE_ORIGIN = "site_origin"  # anyone, from an origin a configured site allows (CORS)
    API_TOKEN = "api_token"  # a bank system: `Authorization: Bearer <API token>`
    AGENT = "agent"  # a signed-in agent (session cookie + CSRF) or an API token
    METRICS = "metrics"  # metrics.token if set, else loopback only (engine/http/ops.py)


_SECURITY: Mapping[Auth, list[dict[str, list[str]]] | None] = {
    Auth.PUBLIC: None,
    Auth.SITE_ORIGIN: None,
    Auth.API_TOKEN: [{"bearerAuth": []}],
    Auth.AGENT: [{"agentSession": []}, {"bearerAuth": []}],
    Auth.METRICS: [{}, {"bearerAuth": []}],
}
CREDENTIALED = frozenset({Auth.API_TOKEN, Auth.AGENT})
"""Routes that refuse a caller without credentials (401)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer of a route: JSON of type `body`, and/or content of the `media` types
    (with a body: the other forms it can take, e.g. a report's `format=csv`)."""

    description: str
    body: Any = None
    media: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    """One route of the HTTP interface: what the app registers and the document says.

    `replies` are the answers that are not refusals; `refusals` map a status to its
    description, with an `ErrorBody` answer. The refusals every route of a kind can give
    (rate limit, bad path parameter, bad body, missing credentials) are added by
    `build_document`, not written per route.
    """

    method: str
    path: str
    handler: Handler
    auth: Auth
    summary: str
    tags: tuple[str, ...]
    replies: Mapping[int, Reply]
    refusals: Mapping[int, str] = field(default_factory=dict)
    body: Any = None  # the request body's type (a msgspec Struct)
    body_media: tuple[str, ...] = ("application/json",)
    query: Any = None  # a Struct whose fields are the query parameters
    description: str | None = None

    @property
    def path_parameters(self) -> list[str]:
        """
        >>> Route("GET", "/v1/a/{x}/b/{y}", None, Auth.PUBLIC, "", (), {}).path_parameters
        ['x', 'y']
        """
        return _PATH_PARAM.findall(self.path)


def build_document(
    routes: Sequence[Route], path_parameters: Mapping[str, Any], description: str
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`; `path_parameters` types each `{name}`."""
    types: list[Any] = [ErrorBody]
    for route in routes:
        for t in (route.body, route.query, *(r.body for r in route.replies.values())):
            if t is not None and t not in types:
                types.append(t)
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(map(id, types), refs, strict=True))
    query_names = {
        _name(s) for r in routes if r.query is not None for s in [schema_of[id(r.query)]]
    }
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "operationId": _operation_id(route),
            "summary": route.summary,
            "tags": list(route.tags),
        }
        if route.description:
            op["description"] = route.description
        security = _SECURITY[route.auth]
        if security is not None:
            op["security"] = security
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": msgspec.json.schema(path_parameters[name]),
            }
            for name in route.path_parameters
        ]
        if route.query is not None:
            query = components[_name(schema_of[id(route.query)])]
            required = set(query.get("required", ()))
            parameters += [
                {"name": name, "in": "query", "required": name in required, "schema": schema}
                for name, schema in query["properties"].items()
            ]
        if parameters:
            op["parameters"] = parameters
        if route.body is not None:
            ref = schema_of[id(route.body)]
            op["requestBody"] = {
                "required": True,
                "content": {media: {"schema": ref} for media in route.body_media},
            }
        responses: dict[str, Any] = {}
        for status, reply in route.replies.items():
            answer: dict[str, Any] = {"description": reply.description}
            content: dict[str, Any] = {}
            if reply.body is not None:
                content["application/json"] = {"schema": schema_of[id(reply.body)]}
            content |= {media: {} for media in reply.media}  # with a body: alternatives
            if content:
                answer["content"] = content
            responses[str(status)] = answer
        for status, why in {**_common_refusals(route), **route.refusals}.items():
            responses.setdefault(str(status), _error(why))
        op["responses"] = dict(sorted(responses.items()))
        paths.setdefault(route.path, {})[route.method.lower()] = op
    for name in query_names:  # inlined as parameters above
        components.pop(name)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ringback", "version": __version__, "description": description},
        "tags": [{"name": t} for t in sorted({t for r in routes for t in r.tags})],
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "agentSession": {"type": "apiKey", "in": "cookie", "name": "rb_session"},
            },
        },
        "paths": paths,
    }


def _common_refusals(route: Route) -> dict[int, str]:
    """The refusals every operation of a kind can give, so the document lists each status
    a client can meet (schemathesis checks answers against it): every route has a
    per-address budget (429); path parameters are validated (400) and looked up (404);
    request bodies can be malformed (400), too large (413), or of a media type or
    encoding we refuse (415); credentialed operations refuse strangers (401). A CORS
    preflight answers only 204 or a bare 403."""
    if route.method == "OPTIONS":
        return {}
    extra = {429: "Rate limited (Retry-After)"}
    if route.path_parameters:
        extra |= {400: "Invalid path parameter", 404: "Not found"}
    if route.method in ("POST", "PUT", "PATCH"):
        extra |= {
            400: "Invalid body (code + JSON path)",
            413: "Body too large",
            415: "Unsupported media type or content encoding",
        }
    if route.auth in CREDENTIALED:
        extra[401] = "Missing or invalid credentials"
    return extra


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="ErrorBody")}}},
    }


def _name(ref: dict[str, Any]) -> str:
    return str(ref["$ref"]).rpartition("/")[2]


def _operation_id(route: Route) -> str:
    """
    >>> _operation_id(Route("GET", "/v1/profiles/{customer_id}", None, Auth.PUBLIC, "", (), {}))
    'get_v1_profiles_customer_id'
    """
    words = re.findall(r"[A-Za-z0-9]+", route.path)
    return "_".join([route.method.lower(), *words]) if words else route.method.lower()
