"""The management API's OpenAPI 3.1 document, served at GET /api/v1/openapi.json.

Generated, never hand-kept: every path and operation from the route table (http_routes.py),
every parameter with its schema, maximum and example from the parameter definitions the routes
parse with (http_params.py, maxima from limits.py), the roles from the gate's table (gate.py)
and each answer's schema from the contract message it renders (proto_schema.py). Errors are
the one shape http_api.py answers with (`ERROR_SCHEMA`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import orjson

from vllm_audit_agent.api.gate import METHOD_ROLES
from vllm_audit_agent.api.http_params import Param
from vllm_audit_agent.api.http_routes import NDJSON, PREFIX, ROUTES, Route
from vllm_audit_agent.api.proto_schema import message_schema, ref
from vllm_audit_agent.api.tokens import ADMIN
from vllm_audit_agent.records.identity import agent_version

#: `{"error": {...}}`: every 4xx and 5xx answer of the management API.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {
        "type": "object",
        "required": ["status", "code", "message"],
        "additionalProperties": False,
        "properties": {
            "status": {"type": "integer", "minimum": 400, "maximum": 599,
                       "description": "the HTTP status, repeated"},
            "code": {"type": "string", "description": "the gRPC status name (INVALID_ARGUMENT, "
                     "UNAUTHENTICATED, ...) or the HTTP condition (METHOD_NOT_ALLOWED, ...)"},
            "message": {"type": "string", "minLength": 1,
                        "description": "what was wrong, naming the parameter"},
        },
    }},
}
_ERROR = {"$ref": "#/components/responses/Error"}


@cache
def document_bytes() -> bytes:
    return orjson.dumps(document())


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(PREFIX + route.path, {})[route.method.lower()] = _operation(route,
                                                                                    schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "vllm-audit agent: management API", "version": agent_version(),
                 "description": "The JSON face of the agent's gRPC QueryService and "
                                "ControlService: the same calls, roles and access records."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {"Error": {"description": "The call was refused or failed",
                                    "content": {"application/json": {
                                        "schema": {"$ref": "#/components/schemas/Error"}}}}},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A token of the agent's token table (or its local admin token)"}},
        },
    }


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    parameters = [*_parameters(route.path_params, "path"), *_parameters(route.query, "query")]
    if not route.rpc:
        return {"operationId": "OpenApiDocument", "summary": route.summary, "security": [],
                "parameters": parameters,
                "responses": {"200": {"description": "This document", "content": {
                    "application/json": {"schema": {"type": "object"}}}}, "default": _ERROR}}
    roles = sorted(METHOD_ROLES.get(route.rpc, frozenset({ADMIN})))
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "description": f"The gRPC method {route.rpc.strip('/')}; roles: {', '.join(roles)}. "
                       "Every call is an access record in the record log.",
        "x-grpc-method": route.rpc,
        "x-roles": roles,
        "parameters": parameters,
        "responses": {"200": {"description": "OK", "content": {
            route.media_type: {"schema": _answer(route, schemas)}}}, "default": _ERROR},
    }
    if route.body is not None:
        operation["requestBody"] = {"required": any(p.required for p in route.body.values()),
                                    "content": {"application/json": {"schema": {
                                        "type": "object", "additionalProperties": False,
                                        "properties": {n: _schema(p)
                                                       for n, p in route.body.items()},
                                        "required": [n for n, p in route.body.items()
                                                     if p.required]}}}}
    return operation


def _parameters(params: Mapping[str, Param], where: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": where, "required": where == "path" or param.required,
             "description": param.description, "schema": dict(param.schema),
             "example": param.example} for name, param in params.items()]


def _schema(param: Param) -> dict[str, Any]:
    return {**param.schema, "description": param.description, "examples": [param.example]}


def _answer(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    """The 200 answer's schema: the gRPC method's response message as the API renders it."""
    if route.media_type == NDJSON:
        return {"type": "string", "description": "One JSON record per line, as `vllm-audit "
                "export` writes them (schema/trail-record.schema.json); a cut transfer (no "
                "final chunk) means the export failed part-way"}
    output = route.grpc_method().output_type
    if route.name != "GetTrail":
        return ref(output, schemas)
    # Events are rendered in protobuf's JSON mapping (http_api.trail_json): one body of many
    # kinds each, the unset ones omitted.
    return message_schema(output, schemas, {"events": {"type": "array", "items": {
        "type": "object", "description": "a vllm_audit.v1.Event in protobuf's JSON mapping"}}})
