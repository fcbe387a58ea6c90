"""`/openapi.json`: the public HTTP interface, with request schemas from msgspec.

The event schema is generated from `engine.ingest.schema`, so the document cannot drift
from what the server actually accepts.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from aiohttp import web

from engine import __version__
from engine.http.errors import json_response
from engine.ingest.schema import Batch
from engine.profile.attributes import CustomerAttributes

__all__ = ["handle_openapi", "openapi_document"]

_REF = "#/components/schemas/{name}"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="Error")}}},
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_AGENT: list[dict[str, list[str]]] = [{"agentSession": []}, {"bearerAuth": []}]
_TRIGGER = {
    "name": "trigger_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
}
_CUSTOMER = {
    "name": "customer_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
}


@cache
def openapi_document() -> dict[str, Any]:
    (batch_ref, attrs_ref), components = msgspec.json.schema_components(
        (Batch, CustomerAttributes), ref_template=_REF
    )
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "path": {"type": ["string", "null"]},
                },
            }
        },
    }
    components["Decision"] = {
        "type": "object",
        "additionalProperties": True,
        "properties": {
            "id": {"type": "string"},
            "action": {"type": "string"},
            "slot": {"type": "string"},
            "offer": {"type": "object"},
        },
    }
    decisions = {"type": "array", "items": {"$ref": _REF.format(name="Decision")}}
    ingest_ok = {
        "type": "object",
        "required": ["accepted", "duplicates", "decisions"],
        "properties": {
            "accepted": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "decisions": decisions,
        },
    }
    plain = {"type": "object", "additionalProperties": True}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Ringback",
            "version": __version__,
            "description": "Real-time web-behaviour personalisation and callback engine for banks.",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "agentSession": {"type": "apiKey", "in": "cookie", "name": "rb_session"},
            },
        },
        "paths": {
            "/v1/events": {
                "post": {
                    "summary": "Ingest a batch of browser events; returns decisions",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": batch_ref},
                            "text/plain": {"schema": batch_ref},
                        },
                    },
                    "responses": {
                        "200": _json(ingest_ok),
                        "400": _error("Invalid batch (code + JSON path)"),
                        "401": _error("Identity token missing a valid signature or expired"),
                        "403": _error("Origin not allowed or token for another site"),
                        "404": _error("Unknown site"),
                        "413": _error("Batch too large"),
                        "415": _error("Unsupported media type"),
                        "429": _error("Rate limited (Retry-After)"),
                        "503": _error("Profile store unavailable (Retry-After)"),
                    },
                },
                "options": {
                    "summary": "CORS preflight",
                    "responses": {
                        "204": {"description": "Allowed"},
                        "403": {"description": "Origin not allowed"},
                    },
                },
            },
            "/v1/decisions": {
                "get": {
                    "summary": "Current offers for a page load",
                    "parameters": [
                        {
                            "name": "site",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "anonymous_id",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"},
                        },
                    ],
                    "responses": {
                        "200": _json({"type": "object", "properties": {"decisions": decisions}}),
                        "400": _error("Invalid parameters"),
                        "404": _error("Unknown site"),
                    },
                },
                "options": {
                    "summary": "CORS preflight",
                    "responses": {
                        "204": {"description": "Allowed"},
                        "403": {"description": "Origin not allowed"},
                    },
                },
            },
            "/v1/decisions/{decision_id}": {
                "get": {
                    "summary": "The audit record of a decision: inputs, rules matched and "
                    "suppressed, policy checks, scores, arbitration",
                    "security": _BEARER,
                    "parameters": [
                        {
                            "name": "decision_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
                        }
                    ],
                    "responses": {
                        "200": _json(plain),
                        "401": _error("No/bad API token"),
                        "404": _error("Unknown or expired"),
                    },
                }
            },
            "/v1/profiles/{customer_id}": {
                "get": {
                    "summary": "Read a customer's live profile",
                    "security": _BEARER,
                    "parameters": [_CUSTOMER],
                    "responses": {
                        "200": _json(plain),
                        "401": _error("No/bad API token"),
                        "404": _error("No such profile"),
                    },
                },
                "delete": {
                    "summary": "Erase every key of a customer and linked anonymous ids",
                    "security": _BEARER,
                    "parameters": [_CUSTOMER],
                    "responses": {"200": _json(plain), "401": _error("No/bad API token")},
                },
            },
            "/v1/profiles/{customer_id}/attributes": {
                "put": {
                    "summary": "Replace a customer's CRM attributes",
                    "security": _BEARER,
                    "parameters": [_CUSTOMER],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": attrs_ref}},
                    },
                    "responses": {
                        "200": _json(plain),
                        "400": _error("Invalid attributes (code + JSON path)"),
                        "401": _error("No/bad API token"),
                    },
                },
            },
            "/v1/agents/login": {
                "post": {
                    "summary": "Agent sign-in: sets an HttpOnly SameSite=Strict session cookie and "
                    "returns the CSRF token for X-CSRF-Token",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["user", "password"],
                                    "properties": {
                                        "user": {"type": "string"},
                                        "password": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {"200": _json(plain), "401": _error("Wrong user or password")},
                }
            },
            "/v1/agents/logout": {
                "post": {
                    "summary": "Sign out (CSRF token required)",
                    "responses": {"200": _json(plain), "401": _error("Not signed in")},
                }
            },
            "/v1/agents/me": {
                "get": {
                    "summary": "Who is signed in (and the CSRF token)",
                    "responses": {"200": _json(plain), "401": _error("Not signed in")},
                }
            },
            "/v1/triggers/{trigger_id}/claim": {
                "post": {
                    "summary": "Claim a callback: exactly one agent wins",
                    "security": _AGENT,
                    "parameters": [_TRIGGER],
                    "responses": {
                        "200": _json(plain),
                        "401": _error("Not signed in"),
                        "403": _error("CSRF token missing"),
                        "404": _error("No such trigger"),
                        "409": _error("Already claimed (by whom)"),
                        "410": _error("Expired and withdrawn"),
                    },
                }
            },
            "/v1/triggers/{trigger_id}/complete": {
                "post": {
                    "summary": "Record the outcome of a claimed callback",
                    "security": _AGENT,
                    "parameters": [_TRIGGER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["outcome"],
                                    "properties": {
                                        "outcome": {
                                            "enum": [
                                                "connected",
                                                "no_answer",
                                                "converted",
                                                "not_interested",
                                            ]
                                        },
                                        "value": {"type": "number"},
                                        "note": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(plain),
                        "403": _error("Claimed by someone else"),
                        "409": _error("Not claimed, or already completed"),
                    },
                }
            },
            "/v1/triggers/ws": {
                "get": {
                    "summary": "WebSocket: a snapshot of open callbacks, then every new trigger, "
                    "claim and completion",
                    "security": _AGENT,
                    "responses": {
                        "101": {"description": "Switching protocols"},
                        "400": {"description": "Not a WebSocket handshake"},
                        "401": _error("Not signed in"),
                        "403": _error("Not the dashboard's own origin"),
                    },
                }
            },
            "/v1/outcomes": {
                "post": {
                    "summary": "Outcome of a decision from a bank system",
                    "security": _BEARER,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["decision_id", "outcome"],
                                    "properties": {
                                        "decision_id": {"type": "string"},
                                        "outcome": {"type": "string"},
                                        "value": {"type": "number"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(plain),
                        "400": _error("Invalid outcome"),
                        "401": _error("No/bad API token"),
                        "404": _error("Unknown decision"),
                    },
                }
            },
            "/v1/customers/{customer_id}/context": {
                "get": {
                    "summary": "Screen-pop for agents and CTI: presence, recent activity, "
                    "calculators, best offer, contact history",
                    "security": _AGENT,
                    "parameters": [_CUSTOMER],
                    "responses": {
                        "200": _json(plain),
                        "401": _error("No credentials"),
                        "404": _error("Unknown customer"),
                    },
                }
            },
            "/v1/supervisor/funnel": {
                "get": {
                    "summary": "Per-rule funnel: fired -> claimed -> outcomes (supervisors); "
                    "cached per worker for 5 s unless fresh=1",
                    "security": _AGENT,
                    "parameters": [
                        {
                            "name": "fresh",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["1"]},
                        }
                    ],
                    "responses": {"200": _json(plain), "403": _error("Supervisors only")},
                }
            },
            "/dashboard": {
                "get": {
                    "summary": "The contact-center dashboard (HTML)",
                    "responses": {"200": {"description": "HTML page"}},
                }
            },
            "/dashboard/{asset}": {
                "get": {
                    "summary": "Dashboard script and styles",
                    "parameters": [
                        {
                            "name": "asset",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "Asset"},
                        "404": _error("No such asset"),
                    },
                }
            },
            "/v1/admin/rules/reload": {
                "post": {
                    "summary": "Reload the rule set now; a broken set is rejected (422, with "
                    "file:line:col) and the previous one keeps serving",
                    "security": _BEARER,
                    "responses": {
                        "200": _json(plain),
                        "401": _error("No/bad API token"),
                        "422": _json(plain, "Rejected; previous rules keep serving"),
                    },
                }
            },
            "/sdk.js": {
                "get": {
                    "summary": "The browser snippet (minified; gzip, strong ETag, 5 min cache)",
                    "responses": {
                        "200": {
                            "description": "JavaScript",
                            "content": {"application/javascript": {}},
                        },
                        "304": {"description": "Not modified (If-None-Match)"},
                    },
                }
            },
            "/demo": {
                "get": {
                    "summary": "The demo bank site (HTML), embedding the snippet as a bank would",
                    "responses": {
                        "200": {"description": "HTML page"},
                        "404": _error("No demo site"),
                    },
                }
            },
            "/demo/{name}": {
                "get": {
                    "summary": "A demo page (mortgages, loans, cards, savings) or asset",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "Page or asset"},
                        "404": _error("No such page"),
                    },
                }
            },
            "/demo/login": {
                "post": {
                    "summary": "Demo sites only: mint an identity token for a demo customer "
                    "(stands in for the bank's backend)",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "user": {"type": "string", "enum": ["alex", "sam"]}
                                    },
                                    "required": ["user"],
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": _json(plain),
                        "400": _error("Unknown user or bad body"),
                        "404": _error("Not a demo deployment"),
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(plain)}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness (Valkey reachable)",
                    "responses": {
                        "200": _json(plain),
                        "503": _json(plain, "Valkey unreachable"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text format 0.0.4)",
                    "description": (
                        "With `metrics.token` set, a Bearer token is required; with "
                        "`metrics.port` set, served only on that listener (404 here). "
                        "With neither, open only while the engine binds loopback and "
                        "the scrape did not come through a proxy (403 `metrics_closed` "
                        "otherwise)."
                    ),
                    "security": [{}, {"bearerAuth": []}],
                    "responses": {
                        "200": {"description": "OK", "content": {"text/plain": {}}},
                        "401": _error("metrics.token is set and was not presented"),
                        "403": _error("Non-loopback bind and no metrics.token"),
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json(plain)}}
            },
        },
    }
    return _with_common_errors(doc)


def _with_common_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """Add the refusals every operation of a kind can give, so the document lists each
    status a client can meet (schemathesis checks answers against it): every route has
    a per-address budget (429); path parameters are validated (400) and looked up (404);
    request bodies can be malformed (400), too large (413), or of a media type or
    encoding we refuse (415); secured operations need credentials (401)."""
    for ops in doc["paths"].values():
        for method, op in ops.items():
            if method == "options":
                continue
            responses = op.setdefault("responses", {})
            extra = {"429": "Rate limited (Retry-After)"}
            if any(p.get("in") == "path" for p in op.get("parameters", ())):
                extra |= {"400": "Invalid path parameter", "404": "Not found"}
            if method in ("post", "put", "patch"):
                extra |= {
                    "400": "Invalid body (code + JSON path)",
                    "413": "Body too large",
                    "415": "Unsupported media type or content encoding",
                }
            if op.get("security") and {} not in op["security"]:
                extra["401"] = "Missing or invalid credentials"
            for status, description in extra.items():
                responses.setdefault(status, _error(description))
    return doc


async def handle_openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())
