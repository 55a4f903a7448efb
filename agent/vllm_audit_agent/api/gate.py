"""Who may call what, decided in one place for both transports: the `Gate`.

- **Authentication**: a bearer token looked up in the token table (tokens.py).
- **Authorisation**: a table from full gRPC method name to the roles that may call it; a method
  not in the table is admin-only (deny by default, so a new RPC is never open by accident).
  Tenant scoping of what a `tenant-auditor` reads is applied by the servicer, which gets the
  caller from `current_principal()`.
- Every authorised call is reported once to an injected `AuditSink` (meta-audit: who, what,
  which filters, how many trails came back, from where, with what outcome); every refusal is
  counted by reason and reported to the sink too (it aggregates floods: refusal_records.py).
- **Admission** of an authorised call (`admit`): its parameters within their documented limits
  (limits.py: larger is INVALID_ARGUMENT), and the access records' budget not spent (else
  RESOURCE_EXHAUSTED): a reader can never push evidence out of the record log.

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
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message

from vllm_audit_agent.api.backoff import CredentialBackoff
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.limits import check as check_limits
from vllm_audit_agent.api.rate_limit import TokenBuckets
from vllm_audit_agent.api.refusal_records import peer_host
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
    # Per-user usage is audit data: readers, a tenant-auditor scoped to its tenant.
    _QUERY + "GetAggregates": _READERS,
    # What the detection rules found names users and keys: audit data, scoped like trails.
    _QUERY + "ListFindings": _READERS,
    _CONTROL + "SetAuditLevel": frozenset({OPERATOR, ADMIN}),
    _CONTROL + "DeleteTrail": frozenset({ADMIN}),
    _CONTROL + "ClearTrails": frozenset({ADMIN}),
}
#: Refusal reasons, each counted as `auth_<reason>` (born at 0): no or an unknown credential
#: (401), a role without the method (403), a parameter over its limit (400), the access
#: records' budget spent (429), a token over its query rate (429), a host backing off after
#: failed credentials (429, backoff.py).
REFUSALS = ("unauthenticated", "permission_denied", "invalid_argument", "access_budget",
            "rate_limited", "backoff")

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "vllm_audit_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the call being served (set by `acting_as` around the handler: the gRPC
    interceptor's and the HTTP API's)."""
    return _principal.get()


_notes: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "vllm_audit_access_notes", default=None)


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[dict[str, Any]]:
    """Makes `principal` the caller `current_principal()` returns, for the duration; yields
    the notes the call leaves for its access record (`note_for_access_record`)."""
    notes: dict[str, Any] = {}
    reset, reset_notes = _principal.set(principal), _notes.set(notes)
    try:
        yield notes
    finally:
        _principal.reset(reset)
        _notes.reset(reset_notes)


def note_for_access_record(**fields: Any) -> None:
    """What a call's access record should say beyond its request (e.g. the level a set-level
    replaced); nothing outside a call."""
    notes = _notes.get()
    if notes is not None:
        notes.update(fields)


# -- meta-audit ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    """Where a call came from: the transport, the peer's address as the transport names it
    (gRPC's `ipv4:127.0.0.1:5000`, `unix:…`; HTTP's remote address) and, over mutual TLS, the
    client certificate's subject."""
    transport: str = "grpc"
    address: str = ""
    client_identity: str = ""


#: A call whose origin no transport named (tests, in-process callers).
NO_PEER = Peer()


class AuditSink(Protocol):
    """Receives one call per authorised RPC, after it ran, and one per refusal (the record
    log implements it: meta_audit.py)."""

    def __call__(self, principal: Principal, method: str, details: dict[str, Any],
                 result_count: int, peer: Peer = NO_PEER, status: str = "OK",
                 notes: dict[str, Any] | None = None) -> None: ...

    def refused(self, refusal: Refused, method: str, peer: Peer) -> None: ...

    def exhausted(self) -> bool:
        """Whether the access records' budget is spent (queries are then refused)."""
        ...

    async def durable(self, timeout: float) -> bool:
        """Whether the record of the last call reported is durable, waiting up to `timeout`
        seconds (a stream sends nothing before its "open" record is)."""
        ...


class CountingAuditSink:
    """The default sink until the record log takes these: counts calls per method."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()

    def __call__(self, principal: Principal, method: str, details: dict[str, Any],
                 result_count: int, peer: Peer = NO_PEER, status: str = "OK",
                 notes: dict[str, Any] | None = None) -> None:
        self.calls[method] += 1

    def refused(self, refusal: Refused, method: str, peer: Peer) -> None:
        self.refusals[refusal.reason] += 1

    def exhausted(self) -> bool:
        return False

    async def durable(self, timeout: float) -> bool:
        return True  # it writes nothing: nothing to wait for


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
    if "rows" in fields:  # aggregates: the groups returned
        # the ignore[attr-defined] below: the method's name says which response it is
        return len(response.rows)  # type: ignore[attr-defined]
    if "findings" in fields:  # the findings listed
        # the ignore[attr-defined] below: the method's name says which response it is
        return len(response.findings)  # type: ignore[attr-defined]
    if "records" in fields:
        # the ignore[attr-defined] below: the method's name says which response it is
        return len(response.records)  # type: ignore[attr-defined]
    if "deleted" in fields:
        # the ignore[attr-defined] below: the method's name says which response it is
        return int(response.deleted)  # type: ignore[attr-defined]
    return 0


#: Calls that read no audit data and are polled (liveness): recording them would drown the
#: log in noise, and they are never refused for the access records' budget.
NOT_RECORDED = frozenset({"Health"})


# -- the gate -------------------------------------------------------------------------------------
class Refused(Exception):
    """A call the gate turned away: `reason` is one of REFUSALS (counted), `code` the gRPC
    status (the HTTP API maps it: 401, 403, 400, 429); `token_id` when the token was known."""

    def __init__(self, reason: str, code: grpc.StatusCode, message: str,
                 token_id: str = "") -> None:
        super().__init__(message)
        self.reason, self.code, self.message, self.token_id = reason, code, message, token_id


class Gate:
    """Who may call what, for every transport: authenticates a bearer token, checks the
    caller's role against METHOD_ROLES, counts refusals and reports authorised calls to the
    meta-audit sink."""

    def __init__(self, tokens: TokenTable, counters: Counter[str],
                 audit_sink: AuditSink | None = None,
                 rate_limit: TokenBuckets | None = None) -> None:
        self.tokens = tokens
        self.counters = counters
        self.rate_limit = rate_limit or TokenBuckets(0, 0)
        self.backoff = CredentialBackoff()
        for reason in REFUSALS:
            counters[f"auth_{reason}"] += 0
        self.audit_sink: AuditSink = audit_sink or CountingAuditSink()

    def authorise(self, method: str, token: str | None, how_to_send: str,
                  peer: Peer = NO_PEER) -> Principal:
        """The caller of `method` (a full gRPC method name); raises Refused (counted).
        `how_to_send`: how this transport carries the credential, for the refusal message.
        A peer host that kept failing is refused before its credential is looked at."""
        host = peer_host(peer.address)
        wait = self.backoff.blocked_for(host) if host else 0.0
        if wait:
            raise self._refused("backoff", grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many failed credentials from {host}: retry in "
                                f"{wait:.0f} s")
        if token is None:
            self.backoff.failed(host)
            raise self._refused("unauthenticated", grpc.StatusCode.UNAUTHENTICATED,
                                f"{method} needs a credential: send {how_to_send}")
        principal = self.tokens.lookup(token)
        if principal is None:
            self.backoff.failed(host)
            raise self._refused("unauthenticated", grpc.StatusCode.UNAUTHENTICATED,
                                f"{method}: the bearer token is not one this agent knows")
        allowed = METHOD_ROLES.get(method, frozenset({ADMIN}))
        if principal.role not in allowed:
            logger.info("refused %s to %s (role %s, token %s)", method, principal.subject,
                        principal.role, principal.token_id)
            raise self._refused("permission_denied", grpc.StatusCode.PERMISSION_DENIED,
                                f"{method} needs role {' or '.join(sorted(allowed))}; "
                                f"{principal.subject!r} has role {principal.role}",
                                principal.token_id)
        return principal

    def admit(self, principal: Principal, method: str, request: object) -> None:
        """Raises Refused (counted) for a request over a documented limit, or for any
        recorded call while the access records' budget is spent."""
        if isinstance(request, Message):
            try:
                check_limits(request)
            except ApiError as exc:
                raise self._refused("invalid_argument", exc.code, exc.message,
                                    principal.token_id) from None
        # The admin operates the agent (and the local CLI and benchmarks use its token); every
        # reader and operator token is limited.
        if principal.role != ADMIN and not self.rate_limit.take(principal.token_id):
            raise self._refused(
                "rate_limited", grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"token {principal.token_id} is over its query rate "
                f"({self.rate_limit.rate:g}/s, bursts of {self.rate_limit.burst:g}); retry later",
                principal.token_id)
        exhausted = getattr(self.audit_sink, "exhausted", None)  # a plain callable has none
        if method.rsplit("/", 1)[-1] not in NOT_RECORDED and exhausted is not None and exhausted():
            raise self._refused(
                "access_budget", grpc.StatusCode.RESOURCE_EXHAUSTED,
                "the agent's budget for access records is spent: queries are refused until "
                "retention frees it, so that they never push evidence out of the record log",
                principal.token_id)

    def _refused(self, reason: str, code: grpc.StatusCode, message: str,
                 token_id: str = "") -> Refused:
        self.counters[f"auth_{reason}"] += 1
        return Refused(reason, code, message, token_id)

    def refusal_on_record(self, refusal: Refused, method: str, peer: Peer) -> None:
        """Reports a refusal (already counted) to the sink, with where the call came from."""
        refused = getattr(self.audit_sink, "refused", None)  # a plain callable has none
        if refused is None:
            return
        try:
            refused(refusal, method, peer)
        except Exception as exc:  # never fail the answer to the caller; count it
            self.counters["meta_audit_errors"] += 1
            logger.exception("refusal record failed for %s: %r", method, exc)

    async def recorded(self, timeout: float) -> bool:
        """Whether the record of the call just reported (`audited`) is durable, waiting up to
        `timeout` seconds. Call it right after `audited`, with no await in between."""
        durable = getattr(self.audit_sink, "durable", None)  # a plain callable has none
        return True if durable is None else bool(await durable(timeout))

    def audited(self, principal: Principal, method: str, details: dict[str, Any], count: int,
                peer: Peer = NO_PEER, status: str = "OK",
                notes: dict[str, Any] | None = None) -> None:
        if notes:
            self.audit_sink(principal, method, details, count, peer=peer, status=status,
                            notes=notes)
        else:  # a sink from before notes (tests inject plain callables) needs none
            self.audit_sink(principal, method, details, count, peer=peer, status=status)
