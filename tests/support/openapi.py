"""Reading the agent's OpenAPI document in tests: its operations, validators of answers against
the schemas it documents, and hypothesis strategies of requests derived from it (values within
each parameter's documented schema, at and past its maxima, and anything else)."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_URI = "urn:vllm-audit:openapi"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    pointer: str  # JSON pointer of the operation in the document
    parameters: tuple[dict[str, Any], ...]
    body: dict[str, Any] | None  # the JSON body's schema
    media_type: str  # of the 200 answer

    def params(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.parameters if p["in"] == where]


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def operations(doc: dict[str, Any]) -> list[Operation]:
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            (media_type,) = op["responses"]["200"]["content"]
            out.append(Operation(method.upper(), path,
                                 f"/paths/{_escape(path)}/{method}", tuple(op["parameters"]),
                                 body["schema"] if body else None, media_type))
    return out


class Validators:
    """jsonschema validators of the document's own schemas (refs resolved in the document)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)

    def at(self, pointer: str) -> Draft202012Validator:
        ref = DOC_URI + "#" + urllib.parse.quote(pointer, safe="/~")
        return Draft202012Validator({"$ref": ref}, registry=self.registry)

    def error(self) -> Draft202012Validator:
        return self.at("/components/schemas/Error")

    def answer(self, op: Operation) -> Draft202012Validator:
        return self.at(f"{op.pointer}/responses/200/content/"
                       f"{_escape(op.media_type)}/schema")


# -- strategies --------------------------------------------------------------------------------
def _valid_text(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Query text within a parameter's schema."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum", 0), schema.get("maximum", 2**31)).map(str)
    if kind == "boolean":
        return st.sampled_from(["true", "false", "1", "0", "yes", "no"])
    return st.text(max_size=min(schema.get("maxLength", 64), 64))


def _edges(schema: dict[str, Any]) -> list[str]:
    """A parameter's documented limits, and one past each."""
    edges = []
    if "maximum" in schema:
        edges += [str(schema["maximum"]), str(schema["maximum"] + 1), "-1"]
    if "maxLength" in schema:
        edges += ["x" * schema["maxLength"], "x" * (schema["maxLength"] + 1)]
    return edges


_ANY_TEXT = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["2147483648", "4294967296", "-1", "1e9", "1e400", "inf", "NaN", "",
                     "2026-01-01T00:00:00Z", "9" * 30, "x" * 300]))


def value_of(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Mostly what the schema allows; its edges; sometimes anything."""
    edges = _edges(schema)
    return st.one_of(_valid_text(schema), _valid_text(schema),
                     st.sampled_from(edges) if edges else _ANY_TEXT, _ANY_TEXT)


def query_of(op: Operation) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Some of the operation's documented parameters, an unknown one at times, a repeat."""
    documented = [st.tuples(st.just(p["name"]), value_of(p["schema"]))
                  for p in op.params("query")]
    unknown = st.tuples(st.text(min_size=1, max_size=10), _ANY_TEXT)
    one = st.one_of(*documented, unknown) if documented else unknown
    return st.lists(one, max_size=5)


def _json_of(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("type") == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: _json_of(v) for k, v in props.items() if k in required},
            optional={k: _json_of(v) for k, v in props.items() if k not in required})
    return st.text(max_size=schema.get("maxLength", 20))


_ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                         lambda inner: st.lists(inner, max_size=3) |
                         st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def body_of(op: Operation) -> st.SearchStrategy[bytes | None]:
    """A body the schema allows, any JSON, any bytes, or none."""
    anything = st.one_of(st.none(), _ANY_JSON.map(lambda v: json.dumps(v).encode()),
                         st.binary(max_size=64))
    if op.body is None:
        return st.one_of(st.none(), st.none(), anything)
    return st.one_of(_json_of(op.body).map(lambda v: json.dumps(v).encode()), anything)


def path_of(op: Operation, draw: Any) -> str:
    """The operation's path with each path parameter drawn from its schema or anything."""
    path = op.path
    for param in op.params("path"):
        value = draw(st.one_of(value_of(param["schema"]), st.text(min_size=1, max_size=300)))
        path = path.replace("{" + param["name"] + "}", urllib.parse.quote(value or "x", safe=""))
    return path
