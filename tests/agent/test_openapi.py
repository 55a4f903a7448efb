"""The OpenAPI document the agent serves (GET /api/v1/openapi.json), against a real agent process
over real HTTP: it is valid OpenAPI 3.1, it lists exactly the routes the server answers, every
parameter it documents is accepted, and each documented maximum is the one the server enforces
(at it: never the limit's refusal; past it: 400 naming the parameter)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from harness import procs
from tests.support.openapi import Operation, Validators, operations

REPO = Path(__file__).resolve().parents[2]
OAS_31 = json.loads((REPO / "tests" / "data" / "openapi-3.1-schema.json").read_text())
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


@dataclass
class Agent:
    base: str
    token: str
    doc: dict[str, Any]

    def call(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
             body: dict[str, Any] | None = None) -> httpx.Response:
        return httpx.request(method, self.base + path, params=params, json=body, timeout=30,
                             headers={"Authorization": f"Bearer {self.token}"})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    tmp = tmp_path_factory.mktemp("openapi")
    # With the detection rules: GET /findings answers (without them it is refused, 409).
    proc, _, base = procs.start_agent(tmp, tmp / "ingest.sock", None, level="summary",
                                      extra_args=["--detections"])
    try:
        reply = httpx.get(base + "/api/v1/openapi.json", timeout=30)  # no credential needed
        assert reply.status_code == 200, reply.text
        assert reply.headers["Content-Type"].startswith("application/json")
        yield Agent(base, procs.admin_token(tmp), reply.json())
    finally:
        proc.stop()


def schema_objects(doc: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every Schema Object of the document, with where it is."""
    for name, schema in doc["components"]["schemas"].items():
        yield f"components/schemas/{name}", schema
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for param in op["parameters"]:
                yield f"{method} {path} {param['name']}", param["schema"]
            for media in op.get("requestBody", {}).get("content", {}).values():
                yield f"{method} {path} body", media["schema"]
            for media in op["responses"].get("200", {}).get("content", {}).values():
                yield f"{method} {path} 200", media["schema"]


def test_the_document_is_valid_openapi_3_1(served: Agent) -> None:
    doc = served.doc
    assert doc["openapi"].startswith("3.1.")
    # The OpenAPI Initiative's schema of 3.1 documents (tests/data/openapi-3.1-schema.SOURCE),
    # with format checks; it leaves Schema Objects to their dialect, JSON Schema 2020-12.
    validator = Draft202012Validator(OAS_31, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    for _, schema in schema_objects(doc):
        Draft202012Validator.check_schema(schema)
    # Every $ref resolves, and every operation is named once.
    validators = Validators(doc)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), ids
    for ref in set(_refs(doc)):
        validators.at(ref.removeprefix("#")).is_valid({})  # raises if it does not resolve


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"]
        for item in value.values():
            yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def test_every_route_the_server_answers_is_in_the_document(served: Agent) -> None:
    ops = operations(served.doc)
    listed: dict[str, set[str]] = {}
    for op in ops:
        listed.setdefault(op.path, set()).add(op.method)
    assert {"/api/v1/health", "/api/v1/trails", "/api/v1/trails/{id}", "/api/v1/export",
            "/api/v1/openapi.json"} <= set(listed)
    for path, methods in listed.items():
        for method in METHODS:
            reply = served.call(method, path.replace("{id}", "no-such-trail"))
            if method in methods:
                assert reply.status_code not in (405, 501), (method, path, reply.text)
                if reply.status_code == 404:  # the trail, not the route, is missing
                    assert "no trail" in reply.json()["error"]["message"], (method, path)
            else:
                # The server answers the method on no route of this path: Allow says which.
                assert reply.status_code == 405, (method, path, reply.status_code)
                assert set(reply.headers["Allow"].split(",")) == methods, (method, path)
    nowhere = served.call("GET", "/api/v1/no-such-route")
    assert nowhere.status_code == 404


def _example_request(op: Operation, only: str | None = None
                     ) -> tuple[str, list[tuple[str, str]], dict[str, Any] | None]:
    """The operation with its documented examples: every parameter, or `only` that one."""
    path = op.path
    for param in op.params("path"):
        path = path.replace("{" + param["name"] + "}", param["example"])
    # An alias stands for another parameter: both at once are a repeat (400).
    params = [(p["name"], p["example"]) for p in op.params("query")
              if only == p["name"] or (only is None and not _alias_of(p))]
    body = None
    if op.body is not None:
        body = {name: schema["examples"][0] for name, schema in op.body["properties"].items()
                if only in (None, name) or name in op.body.get("required", [])}
    return path, params, body


def _alias_of(param: dict[str, Any]) -> str:
    description: str = param.get("description", "")
    return description.removeprefix("alias of ").split()[0] \
        if description.startswith("alias of ") else ""


def test_every_documented_parameter_is_accepted(served: Agent) -> None:
    validators = Validators(served.doc)
    for op in operations(served.doc):
        names = [p["name"] for p in op.params("query")] + list(
            (op.body or {}).get("properties", {}))
        for only in [None, *names]:
            path, params, body = _example_request(op, only)
            reply = served.call(op.method, path, params, body)
            what = (op.method, path, params, body, reply.status_code, reply.text)
            # A missing trail (the example id) or an erasure's unknown user (the example user)
            # is a 404; nothing documented is refused.
            assert reply.status_code in (200, 404), what
            if reply.status_code == 404:
                message = reply.json()["error"]["message"]
                assert "no trail" in message or "no content key" in message, what
            elif op.media_type == "application/json":
                validators.answer(op).validate(reply.json())


def test_each_documented_maximum_is_the_one_enforced(served: Agent) -> None:
    checked = 0
    for op in operations(served.doc):
        # (name, schema, where, the names a refusal may give it: the proto field's too)
        limited = [(p["name"], p["schema"], "query", {p["name"], _alias_of(p)} - {""})
                   for p in op.params("query")]
        limited += [(p["name"], p["schema"], "path", {p["name"], "request_id"})
                    for p in op.params("path")]
        limited += [(n, s, "body", {n}) for n, s in (op.body or {}).get("properties", {}).items()]
        for name, schema, where, names in limited:
            if "maximum" in schema:
                at, past = str(schema["maximum"]), str(schema["maximum"] + 1)
            elif "maxLength" in schema:
                at, past = "x" * schema["maxLength"], "x" * (schema["maxLength"] + 1)
            else:
                continue
            for value, refused in ((at, False), (past, True)):
                path, params, body = _example_request(op, name if where != "path" else "")
                if where == "query":
                    params = [(name, value)]
                elif where == "path":
                    path = op.path.replace("{" + name + "}", value)
                else:
                    body = {**(body or {}), name: value}
                reply = served.call(op.method, path, params, body)
                message = reply.json()["error"]["message"] if reply.status_code >= 400 else ""
                what = (op.method, path, name, len(value), reply.status_code, message)
                if refused:
                    assert reply.status_code == 400 and any(n in message for n in names), what
                else:
                    assert reply.status_code < 500 and "at most" not in message and \
                        "must be <=" not in message and "must be between" not in message, what
            checked += 1
    assert checked >= 10, checked


def test_times_out_of_range_are_refused_not_crashed(served: Agent) -> None:
    for value in ("inf", "1e400", "9" * 30, "-" + "9" * 30):
        reply = served.call("GET", "/api/v1/trails", [("since", value)])
        assert reply.status_code == 400 and "since" in reply.json()["error"]["message"], \
            (value, reply.text)
