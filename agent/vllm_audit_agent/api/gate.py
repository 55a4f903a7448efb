"""Who may call what, decided in one place for both transports: the `Gate`.

- **Authentication**: a bearer token looked up in the token table (tokens.py).
- **Authorisation**: a table from full gRPC method name to the roles that may call it; a method
  not in the table is admin-only (deny by default, so a new RPC is never open by accident).
  Tenant scoping of what a `tenant-auditor` reads is applied by the servicer, which gets the
  caller from `current_principal()`.
- Every authorised call is reported once to an injected `AuditSink` (meta-audit: who, what,
  which filters, how many trails came back); refusals are counted by reason.

The gRPC interceptor (auth_interceptor.py) and the HTTP management API (http_api.py) both ask
it: one token table, one role table (keyed by the gRPC method an HTTP route stands for), one
set of refusal counters and one meta-audit for both transports.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from vllm_audit_agent.api.tokens import (
    ADMIN,
    AUDITOR,
    OPERATOR,
    ROLES,
    TENANT_AUDITOR,
    Principal,
    TokenTable,
)

logger = logging.getLogger("vllm_audit.agent")

_QUERY = "/vllm_audit.v1.QueryService/"
_CONTROL = "/vllm_audit.v1.ControlService/"
#: Probes (kubelet, load balancers) carry no credential and learn nothing but SERVING.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)

_READERS = frozenset({AUDITOR, TENANT_AUDITOR, ADMIN})
#: Which roles may call which method. Anything not listed is admin-only.
METHOD_ROLES: Mapping[str, frozenset[str]] = {
    _QUERY + "Health": frozenset(ROLES),
    _QUERY + "GetStats": frozenset({AUDITOR, OPERATOR, ADMIN}),
    _QUERY + "ListTrails": _READERS,
    _QUERY + "GetTrail": _READERS,
    _QUERY + "WatchTrails": _READERS,
    _QUERY + "ExportTrails": _READERS,
    _CONTROL + "SetAuditLevel": frozenset({OPERATOR, ADMIN}),
    _CONTROL + "DeleteTrail": frozenset({ADMIN}),
    _CONTROL + "ClearTrails": frozenset({ADMIN}),
}
#: Refusal reasons, each counted as `auth_<reason>` (born at 0).
REFUSALS = ("unauthenticated", "permission_denied")

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "vllm_audit_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the call being served (set by `acting_as` around the handler: the gRPC
    interceptor's and the HTTP API's)."""
    return _principal.get()


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """Makes `principal` the caller `current_principal()` returns, for the duration."""
    reset = _principal.set(principal)
    try:
        yield
    finally:
        _principal.reset(reset)


# -- meta-audit ----------------------------------------------------------------------------------
class AuditSink(Protocol):
    """Receives one call per authorised RPC, after it ran (the record log implements it)."""

    def __call__(self, principal: Principal, method: str, details: dict[str, Any],
                 result_count: int, transport: str = "grpc") -> None: ...


class CountingAuditSink:
    """The default sink until the record log takes these: counts calls per method."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, principal: Principal, method: str, details: dict[str, Any],
                 result_count: int, transport: str = "grpc") -> None:
        self.calls[method] += 1


def result_count(response: Message) -> int:
    """How many trails a response carried (the meta-audit's "how many were returned")."""
    fields = response.DESCRIPTOR.fields_by_name
    if "trails" in fields:
        # the ignore[attr-defined] below: the method's name says which response it is
        return len(response.trails)  # type: ignore[attr-defined]
    if "summary" in fields:
        return 1 if response.HasField("summary") else 0
    if "trail" in fields:
        return 1 if response.HasField("trail") else 0
    if "records" in fields:
        # the ignore[attr-defined] below: the method's name says which response it is
        return len(response.records)  # type: ignore[attr-defined]
    if "deleted" in fields:
        # the ignore[attr-defined] below: the method's name says which response it is
        return int(response.deleted)  # type: ignore[attr-defined]
    return 0


def request_details(request: object) -> dict[str, Any]:
    """What the meta-audit keeps of a request: its fields as protobuf's JSON mapping."""
    if isinstance(request, Message):
        return json_format.MessageToDict(request, preserving_proto_field_name=True)
    return {}


# -- the gate -------------------------------------------------------------------------------------
class Refused(Exception):
    """A call the gate turned away: `reason` is one of REFUSALS (counted), `code` the gRPC
    status (the HTTP API maps it: 401, 403)."""

    def __init__(self, reason: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.reason, self.code, self.message = reason, code, message


class Gate:
    """Who may call what, for every transport: authenticates a bearer token, checks the
    caller's role against METHOD_ROLES, counts refusals and reports authorised calls to the
    meta-audit sink."""

    def __init__(self, tokens: TokenTable, counters: Counter[str],
                 audit_sink: AuditSink | None = None) -> None:
        self.tokens = tokens
        self.counters = counters
        for reason in REFUSALS:
            counters[f"auth_{reason}"] += 0
        self.audit_sink: AuditSink = audit_sink or CountingAuditSink()

    def authorise(self, method: str, token: str | None, how_to_send: str) -> Principal:
        """The caller of `method` (a full gRPC method name); raises Refused (counted).
        `how_to_send`: how this transport carries the credential, for the refusal message."""
        if token is None:
            raise self._refused("unauthenticated", grpc.StatusCode.UNAUTHENTICATED,
                                f"{method} needs a credential: send {how_to_send}")
        principal = self.tokens.lookup(token)
        if principal is None:
            raise self._refused("unauthenticated", grpc.StatusCode.UNAUTHENTICATED,
                                f"{method}: the bearer token is not one this agent knows")
        allowed = METHOD_ROLES.get(method, frozenset({ADMIN}))
        if principal.role not in allowed:
            logger.info("refused %s to %s (role %s, token %s)", method, principal.subject,
                        principal.role, principal.token_id)
            raise self._refused("permission_denied", grpc.StatusCode.PERMISSION_DENIED,
                                f"{method} needs role {' or '.join(sorted(allowed))}; "
                                f"{principal.subject!r} has role {principal.role}")
        return principal

    def _refused(self, reason: str, code: grpc.StatusCode, message: str) -> Refused:
        self.counters[f"auth_{reason}"] += 1
        return Refused(reason, code, message)

    def audited(self, principal: Principal, method: str, details: dict[str, Any], count: int,
                transport: str = "grpc") -> None:
        self.audit_sink(principal, method, details, count, transport=transport)
