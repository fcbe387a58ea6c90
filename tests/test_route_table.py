"""The route table is the one source of the HTTP interface (engine/http/routes.py).

What aiohttp serves, what the table declares and what `/openapi.json` documents are
the same set of operations; the document is valid OpenAPI with its enums taken from
engine/core/vocabulary.py; and the answers a real engine gives match the structs the
table declares for them (unknown top-level keys fail).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
import msgspec
import pytest
import schemathesis
from conftest import RULES_DIR, EngineClient, calc, event, new_anon

from engine.core.settings import Settings
from engine.core.vocabulary import AGENT_OUTCOMES, Action, Channel, Outcome
from engine.http.answers import ErrorBody
from engine.http.app import build_app
from engine.http.openapi import CREDENTIALED
from engine.http.routes import ROUTES, openapi_document

TABLE = {(r.method, r.path): r for r in ROUTES}


def _served(settings: Settings) -> dict[tuple[str, str], Any]:
    app = build_app(settings, settings.redis_url or "redis://127.0.0.1:1")
    return {
        (route.method, route.resource.canonical): route.handler
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # HEAD comes with GET
    }


def test_the_app_serves_exactly_the_routes_of_the_table(settings: Settings) -> None:
    served = _served(replace(settings, rules_dir=RULES_DIR))
    assert set(served) == set(TABLE)
    for key, handler in served.items():
        assert handler is TABLE[key].handler, key
    assert len(TABLE) == len(ROUTES), "a (method, path) is declared twice"


def test_the_document_describes_exactly_the_routes_of_the_table() -> None:
    doc = openapi_document()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == set(TABLE)
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_the_document_is_valid_openapi_and_every_reference_resolves() -> None:
    doc = openapi_document()
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rpartition("/")[2] in schemas, ref


def _schema(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = doc["components"]["schemas"][node["$ref"].rpartition("/")[2]]
    return node


def _body_field(route: tuple[str, str], name: str) -> dict[str, Any]:
    doc = openapi_document()
    op = doc["paths"][route[1]][route[0].lower()]
    body = _schema(doc, op["requestBody"]["content"]["application/json"]["schema"])
    return _schema(doc, body["properties"][name])


def test_outcomes_are_enums_from_the_vocabulary() -> None:
    assert set(_body_field(("POST", "/v1/outcomes"), "outcome")["enum"]) == set(Outcome)
    complete = _body_field(("POST", "/v1/triggers/{trigger_id}/complete"), "outcome")
    assert set(complete["enum"]) == set(AGENT_OUTCOMES)


def test_decision_actions_and_channels_are_enums_from_the_vocabulary() -> None:
    doc = openapi_document()
    decision = doc["components"]["schemas"]["Decision"]["properties"]
    assert set(_schema(doc, decision["action"])["enum"]) == set(Action)
    assert set(_schema(doc, decision["channel"])["enum"]) == set(Channel)


def test_every_refusal_is_documented_as_the_one_error_body() -> None:
    doc = openapi_document()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            route = TABLE[(method.upper(), path)]
            for status, answer in op["responses"].items():
                if int(status) in route.replies:
                    continue
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
            if route.auth in CREDENTIALED:
                assert "401" in op["responses"] and op["security"], path


def test_query_and_path_parameters_come_from_the_table() -> None:
    doc = openapi_document()
    decisions = {p["name"]: p for p in doc["paths"]["/v1/decisions"]["get"]["parameters"]}
    assert decisions["anonymous_id"]["required"] and decisions["anonymous_id"]["in"] == "query"
    assert decisions["anonymous_id"]["schema"]["pattern"] == "^[A-Za-z0-9_-]{8,64}$"
    fresh = doc["paths"]["/v1/supervisor/funnel"]["get"]["parameters"]
    assert fresh == [{"name": "fresh", "in": "query", "required": False, "schema": {"enum": ["1"]}}]
    claim = doc["paths"]["/v1/triggers/{trigger_id}/claim"]["post"]["parameters"]
    assert claim[0]["schema"]["pattern"] == "^[0-9a-f]{24}$" and claim[0]["in"] == "path"


# -- real answers against the declared structs ------------------------------------------


class Checked:
    """Calls a live engine and checks each JSON answer against the table's declaration."""

    def __init__(self, engine: EngineClient) -> None:
        self.engine = engine
        self.seen: set[tuple[str, str, int]] = set()

    async def call(
        self,
        route: tuple[str, str],
        url: str,
        session: aiohttp.ClientSession | None = None,
        *,
        expect: int = 200,
        **kw: Any,
    ) -> Any:
        method, path = route
        async with (session or self.engine.session).request(
            method, f"{self.engine.url}{url}", **kw
        ) as r:
            body = await r.json(content_type=None)
            assert r.status == expect, (route, r.status, body)
        declared = TABLE[route]
        reply = declared.replies.get(r.status)
        struct = reply.body if reply is not None else ErrorBody
        assert reply is not None or r.status in _documented(route), (route, r.status)
        msgspec.convert(body, struct)  # raises on a missing, unknown or mistyped key
        self.seen.add((method, path, r.status))
        return body


def _documented(route: tuple[str, str]) -> set[int]:
    op = openapi_document()["paths"][route[1]][route[0].lower()]
    return {int(s) for s in op["responses"]}


MAIN_ROUTES = {
    ("POST", "/v1/events"),
    ("GET", "/v1/decisions"),
    ("GET", "/v1/decisions/{decision_id}"),
    ("GET", "/v1/profiles/{customer_id}"),
    ("DELETE", "/v1/profiles/{customer_id}"),
    ("PUT", "/v1/profiles/{customer_id}/attributes"),
    ("POST", "/v1/outcomes"),
    ("POST", "/v1/admin/rules/reload"),
    ("POST", "/v1/agents/login"),
    ("POST", "/v1/agents/logout"),
    ("GET", "/v1/agents/me"),
    ("POST", "/v1/triggers/{trigger_id}/claim"),
    ("POST", "/v1/triggers/{trigger_id}/complete"),
    ("GET", "/v1/customers/{customer_id}/context"),
    ("GET", "/v1/supervisor/funnel"),
    ("GET", "/v1/reports/funnel"),
    ("GET", "/v1/reports/conversions"),
    ("GET", "/v1/reports/segments"),
    ("POST", "/v1/agents/inbound"),
    ("POST", "/demo/login"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
}


async def test_real_answers_match_the_declared_answer_structs(
    make_engine: Any, settings: Settings
) -> None:
    engine: EngineClient = await make_engine(replace(settings, rules_dir=RULES_DIR))
    c = Checked(engine)
    api = engine.api_headers
    customer, anon = "c-table", new_anon()

    await c.call(
        ("PUT", "/v1/profiles/{customer_id}/attributes"),
        f"/v1/profiles/{customer}/attributes",
        json={"consent_call": True, "products_held": ["current_account"]},
        headers=api,
    )
    calcs = [calc("mortgage", 250_000 + i * 10_000, 300) for i in range(6)]
    batch = engine.batch(
        [
            event("page_view", page="/mortgages"),
            *calcs,
            event("interest", props={"product": "mortgage", "call_me": True}),
        ],
        anonymous_id=anon,
        identity=engine.token(customer),
    )
    answer = await c.call(("POST", "/v1/events"), "/v1/events", json=batch)
    callbacks = [d for d in answer["decisions"] if d["action"] == "callback"]
    assert callbacks, answer  # the shipped rules call back a consenting customer
    trigger_id = callbacks[0]["id"]
    await c.call(("POST", "/v1/events"), "/v1/events", json={"site": "nope"}, expect=400)

    anon_batch = engine.batch([event("page_view", page="/loans")], anonymous_id=new_anon())
    await c.call(("POST", "/v1/events"), "/v1/events", json=anon_batch)
    await c.call(
        ("GET", "/v1/decisions"),
        f"/v1/decisions?site={engine.site}&anonymous_id={anon_batch['anonymous_id']}",
    )
    await c.call(("GET", "/v1/decisions/{decision_id}"), f"/v1/decisions/{trigger_id}", headers=api)
    await c.call(("GET", "/v1/decisions/{decision_id}"), f"/v1/decisions/{trigger_id}", expect=401)
    await c.call(("GET", "/v1/profiles/{customer_id}"), f"/v1/profiles/{customer}", headers=api)

    agent = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        creds = engine.credentials
        login = await c.call(
            ("POST", "/v1/agents/login"),
            "/v1/agents/login",
            agent,
            json={"user": creds["agent_user"], "password": creds["agent_password"]},
        )
        csrf = {"X-CSRF-Token": login["csrf_token"]}
        await c.call(("GET", "/v1/agents/me"), "/v1/agents/me", agent)
        await c.call(("GET", "/v1/agents/me"), "/v1/agents/me", headers=api)
        await c.call(
            ("GET", "/v1/customers/{customer_id}/context"),
            f"/v1/customers/{customer}/context",
            agent,
        )
        await c.call(
            ("POST", "/v1/triggers/{trigger_id}/claim"),
            f"/v1/triggers/{trigger_id}/claim",
            agent,
            headers=csrf,
        )
        await c.call(
            ("POST", "/v1/triggers/{trigger_id}/claim"),
            f"/v1/triggers/{trigger_id}/claim",
            agent,
            headers=csrf,
            expect=409,
        )
        await c.call(
            ("POST", "/v1/triggers/{trigger_id}/complete"),
            f"/v1/triggers/{trigger_id}/complete",
            agent,
            headers=csrf,
            json={"outcome": "converted", "value": 1200.0, "note": "booked"},
        )
        await c.call(("POST", "/v1/agents/logout"), "/v1/agents/logout", agent, headers=csrf)
    finally:
        await agent.close()

    await c.call(
        ("POST", "/v1/outcomes"),
        "/v1/outcomes",
        json={"decision_id": trigger_id, "outcome": "applied", "value": 1.0},
        headers=api,
    )
    await c.call(
        ("POST", "/v1/outcomes"),
        "/v1/outcomes",
        json={"decision_id": trigger_id, "outcome": "maybe"},
        headers=api,
        expect=400,
    )
    funnel = await c.call(
        ("GET", "/v1/supervisor/funnel"), "/v1/supervisor/funnel?fresh=1", headers=api
    )
    assert funnel["rules"], funnel  # the callback above was counted
    report = await c.call(("GET", "/v1/reports/funnel"), "/v1/reports/funnel", headers=api)
    assert report["rows"], report  # and in the dated funnel
    await c.call(
        ("GET", "/v1/reports/conversions"), "/v1/reports/conversions?by=campaign", headers=api
    )
    await c.call(("GET", "/v1/reports/segments"), "/v1/reports/segments", headers=api)
    inbound = await c.call(
        ("POST", "/v1/agents/inbound"),
        "/v1/agents/inbound",
        json={"customer_id": customer},
        headers=api,
    )
    assert inbound["contact_history"][0]["kind"] == "inbound_call"
    await c.call(("POST", "/v1/admin/rules/reload"), "/v1/admin/rules/reload", headers=api)
    await c.call(("POST", "/demo/login"), "/demo/login", json={"user": "alex"})
    await c.call(("GET", "/healthz"), "/healthz")
    await c.call(("GET", "/readyz"), "/readyz")
    await c.call(("GET", "/openapi.json"), "/openapi.json")
    await c.call(("DELETE", "/v1/profiles/{customer_id}"), f"/v1/profiles/{customer}", headers=api)
    await c.call(
        ("GET", "/v1/profiles/{customer_id}"), f"/v1/profiles/{customer}", headers=api, expect=404
    )

    assert MAIN_ROUTES <= {(m, p) for m, p, _ in c.seen}


@pytest.mark.parametrize(
    ("struct", "answer"),
    [
        ("IngestAnswer", {"accepted": 1, "duplicates": 0, "decisions": [], "extra": 1}),
        ("ErrorBody", {"error": {"code": "x", "message": "y", "path": None, "trace": "z"}}),
        ("CompleteAnswer", {"trigger_id": "a" * 24, "outcome": "maybe"}),
    ],
)
def test_an_answer_that_strays_from_its_struct_is_caught(struct: str, answer: Any) -> None:
    from engine.http import answers

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(answer, getattr(answers, struct))
