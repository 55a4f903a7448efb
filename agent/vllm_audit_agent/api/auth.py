"""Who may call the query and control API, checked in one place: a grpc.aio server interceptor.

- **Authentication**: `authorization: Bearer <token>` metadata. The agent holds only SHA-256
  hashes of tokens (from `--auth-tokens-file`), each mapped to a subject, a role and an
  optional tenant. Without a tokens file the agent makes one admin token at first start in its
  data directory (`admin.token`, 0600) for the local CLI — the Jupyter/Grafana quick start.
- **Authorisation**: a table from full method name to the roles that may call it; a method not
  in the table is admin-only (deny by default, so a new RPC is never open by accident).
  Tenant scoping of what a `tenant-auditor` reads is applied by the servicer, which gets the
  caller from `current_principal()`.
- The standard gRPC health service stays unauthenticated so kubelet probes work.
- Every authorised call is reported once to an injected `AuditSink` (meta-audit: who, what,
  which filters, how many trails came back); refusals are counted by reason.
- The decision itself lives in `Gate`, which the HTTP management API (http_api.py) uses too:
  one token table, one role table (keyed by the gRPC method an HTTP route stands for), one
  set of refusal counters and one meta-audit for both transports.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

logger = logging.getLogger("vllm_audit.agent")

AUDITOR = "auditor"
TENANT_AUDITOR = "tenant-auditor"
OPERATOR = "operator"
ADMIN = "admin"
ROLES = (AUDITOR, TENANT_AUDITOR, OPERATOR, ADMIN)

ADMIN_TOKEN_FILE = "admin.token"
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


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    #: Set for a tenant-auditor: the only tenant whose trails it can read.
    tenant: str = ""
    #: A short prefix of the token's hash: names the credential in logs and the meta-audit
    #: without revealing anything that could be replayed.
    token_id: str = ""


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "vllm_audit_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being served (set by `AuthInterceptor` around the handler)."""
    return _principal.get()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- the token table --------------------------------------------------------------------------
class TokenTable:
    """SHA-256 of a token -> Principal. Tokens themselves are never stored."""

    def __init__(self, entries: Mapping[str, Principal] | None = None) -> None:
        self._by_hash: dict[str, Principal] = dict(entries or {})

    def __len__(self) -> int:
        return len(self._by_hash)

    def add(self, sha256: str, principal: Principal) -> None:
        self._by_hash[sha256] = principal

    def lookup(self, token: str) -> Principal | None:
        # A dict lookup on the digest: timing reveals nothing about a valid token.
        return self._by_hash.get(hash_token(token))

    @classmethod
    def from_file(cls, path: Path) -> TokenTable:
        """Reads a YAML or JSON tokens file; raises ValueError naming the entry at fault.

        Either a list of entries or `{"tokens": [...]}`; each entry has `sha256` (hex of the
        token's SHA-256), `subject`, `role` and, for a tenant-auditor, `tenant`."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"auth tokens file {path}: {exc.strerror or exc}") from None
        data: Any
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"auth tokens file {path}: not valid JSON ({exc})") from None
        else:
            import yaml  # type: ignore[import-untyped]  # no stubs installed; safe_load only

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(f"auth tokens file {path}: not valid YAML ({exc})") from None
        if isinstance(data, dict):
            data = data.get("tokens")
        if not isinstance(data, list) or not data:
            raise ValueError(f"auth tokens file {path}: expected a non-empty list of tokens "
                             "(or a mapping with a 'tokens' list)")
        table = cls()
        for i, entry in enumerate(data):
            sha, principal = _parse_entry(path, i, entry)
            if sha in table._by_hash:
                raise ValueError(f"auth tokens file {path}: entry {i}: sha256 appears twice")
            table.add(sha, principal)
        return table


def _parse_entry(path: Path, i: int, entry: object) -> tuple[str, Principal]:
    where = f"auth tokens file {path}: entry {i}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with sha256, subject, role")
    unknown = set(entry) - {"sha256", "subject", "role", "tenant"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (tokens are never "
                         "configured, only their sha256)")
    sha = str(entry.get("sha256", "")).strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"{where}: sha256 must be 64 hex digits")
    subject = str(entry.get("subject", "")).strip()
    if not subject:
        raise ValueError(f"{where}: subject is required")
    role = str(entry.get("role", "")).strip()
    if role not in ROLES:
        raise ValueError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    tenant = str(entry.get("tenant") or "").strip()
    if role == TENANT_AUDITOR and not tenant:
        raise ValueError(f"{where}: a tenant-auditor needs a tenant")
    if role != TENANT_AUDITOR and tenant:
        raise ValueError(f"{where}: only a tenant-auditor is scoped to a tenant (role {role})")
    return sha, Principal(subject, role, tenant, sha[:12])


def ensure_admin_token(data_dir: Path) -> str:
    """The local admin token in `data_dir/admin.token`, created (0600) if missing."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{path} is empty; delete it and the agent makes a new one") from None
        if path.stat().st_mode & 0o077:
            logger.warning("%s is readable by others than its owner; chmod 600 it", path)
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    logger.info("no auth tokens file configured: made a local admin token in %s", path)
    return token


def bearer_matches(authorization: str, sha256: str | None) -> bool:
    """An HTTP `Authorization` header against a configured token hash (None: no check)."""
    if sha256 is None:
        return True
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        hash_token(token.strip()), sha256)


def metrics_token_hash(path: Path) -> str:
    """The hash of the /metrics token kept in `path` (the file holds the token itself, as a
    Kubernetes Secret mounted for both the agent and Prometheus' bearer_token_file would)."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"metrics token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise ValueError(f"metrics token file {path} is empty")
    return hash_token(token)


def load_token_table(tokens_file: Path | None, data_dir: Path) -> TokenTable:
    if tokens_file is not None:
        return TokenTable.from_file(tokens_file)
    token = ensure_admin_token(data_dir)
    sha = hash_token(token)
    return TokenTable({sha: Principal("local-admin", ADMIN, "", sha[:12])})


# -- transport ----------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or a wildcard (0.0.0.0, [::]) reaches beyond this machine


def check_listener(host: str, tls: bool, allow_insecure_remote: bool) -> None:
    """Refuses a plaintext query listener reachable from other machines unless asked for."""
    if tls or allow_insecure_remote or is_loopback(host):
        return
    raise ValueError(
        f"query address {host!r} is reachable beyond this machine and TLS is not configured: "
        "tokens and audit records would cross the network in the clear. Configure --tls-cert "
        "and --tls-key, listen on 127.0.0.1, or pass --allow-insecure-remote (e.g. behind a "
        "service mesh that encrypts)")


def http_ssl_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The HTTP port's TLS, from the same files as the gRPC listener's: TLS 1.2 or later,
    client certificates from `client_ca` required when it is given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS for the query listener; with `client_ca`, mutual TLS (a client cert is required)."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


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
        return len(response.trails)  # type: ignore[attr-defined]
    if "summary" in fields:
        return 1 if response.HasField("summary") else 0
    if "trail" in fields:
        return 1 if response.HasField("trail") else 0
    if "records" in fields:
        return len(response.records)  # type: ignore[attr-defined]
    if "deleted" in fields:
        return int(response.deleted)  # type: ignore[attr-defined]
    return 0


def request_details(request: object) -> dict[str, Any]:
    """What the meta-audit keeps of a request: its fields as protobuf's JSON mapping."""
    if isinstance(request, Message):
        return json_format.MessageToDict(request, preserving_proto_field_name=True)
    return {}


# -- the interceptor ------------------------------------------------------------------------------
# grpc's classes are generic only in its stubs.
if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _ServerInterceptor = grpc.aio.ServerInterceptor
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler"]]


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


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """Makes `principal` the caller `current_principal()` returns, for the duration."""
    reset = _principal.set(principal)
    try:
        yield
    finally:
        _principal.reset(reset)


class AuthInterceptor(_ServerInterceptor):
    """Authenticates and authorises every RPC of the server it is installed on, through a
    `Gate` (shared with the HTTP management API).

    The caller is made available to the handler through `current_principal()` (a context
    variable set around the handler), and the sink hears of every authorised call."""

    def __init__(self, tokens: TokenTable, counters: Counter[str],
                 audit_sink: AuditSink | None = None) -> None:
        self.gate = Gate(tokens, counters, audit_sink)

    @property
    def audit_sink(self) -> AuditSink:
        return self.gate.audit_sink

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> Handler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler  # an unknown method: gRPC answers UNIMPLEMENTED
        token = _bearer(handler_call_details.invocation_metadata or ())
        try:
            principal = self.gate.authorise(method, token,
                                            "'authorization: Bearer <token>' metadata")
        except Refused as refused:
            return self._refuse(handler, refused.code, refused.message)
        return self._authorised(handler, principal, method)

    def _refuse(self, handler: Handler, code: grpc.StatusCode, message: str) -> Handler:

        async def deny(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(code, message)

        async def deny_stream(request: object, context: grpc.aio.ServicerContext[Any, Any]
                              ) -> AsyncIterator[Any]:
            await context.abort(code, message)
            yield  # pragma: no cover - abort raised

        return _same_kind(handler, deny, deny_stream)

    def _authorised(self, handler: Handler, principal: Principal, method: str) -> Handler:
        gate = self.gate
        # The stubs type handler behaviours for sync servers; on an aio server they are
        # coroutine functions and async generators.
        call_unary: Any = handler.unary_unary
        call_stream: Any = handler.unary_stream

        async def unary(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            reset = _principal.set(principal)
            count = 0
            try:
                response = await call_unary(request, context)
                count = result_count(response)
                return response
            finally:
                _principal.reset(reset)
                gate.audited(principal, method, request_details(request), count)

        async def stream(request: object, context: grpc.aio.ServicerContext[Any, Any]
                         ) -> AsyncIterator[Any]:
            reset = _principal.set(principal)
            count = 0
            try:
                async for response in call_stream(request, context):
                    count += result_count(response)
                    yield response
            finally:
                _principal.reset(reset)
                gate.audited(principal, method, request_details(request), count)

        return _same_kind(handler, unary, stream)


def _bearer(metadata: Any) -> str | None:
    for item in metadata:
        key, value = item[0], item[1]
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _same_kind(handler: Handler, unary: Callable[..., Any], stream: Callable[..., Any]
               ) -> Handler:
    """A handler of the same shape as `handler` running `unary` or `stream` instead.

    The query API has only unary and server-streaming methods; a client-streaming method
    would be refused rather than run unchecked."""
    common = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **common)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **common)

    async def unsupported(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "client-streaming methods are not supported by the auth interceptor")

    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unsupported, **common)
    return grpc.stream_stream_rpc_method_handler(unsupported, **common)


# -- client side ----------------------------------------------------------------------------------
ENV_TOKEN = "VLLM_AUDIT_TOKEN"
ENV_TOKEN_FILE = "VLLM_AUDIT_TOKEN_FILE"


def resolve_client_token(token: str | None, token_file: Path | None, data_dir: Path | None,
                         env: Mapping[str, str]) -> str | None:
    """The CLI's credential: --token, $VLLM_AUDIT_TOKEN, --token-file / $VLLM_AUDIT_TOKEN_FILE,
    else the local agent's admin.token in the data dir if this user can read it."""
    if token:
        return token
    if env.get(ENV_TOKEN):
        return env[ENV_TOKEN]
    path = token_file or (Path(env[ENV_TOKEN_FILE]) if env.get(ENV_TOKEN_FILE) else None)
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"token file {path}: {exc.strerror or exc}") from None
    if data_dir is not None:
        try:
            return (data_dir / ADMIN_TOKEN_FILE).read_text().strip() or None
        except OSError:
            return None  # not a local agent, or not this user's: call without a credential
    return None


class BearerAuth(grpc.AuthMetadataPlugin):
    """Sends the token with every call (over TLS through call credentials)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, context: grpc.AuthMetadataContext,
                 callback: grpc.AuthMetadataPluginCallback) -> None:
        callback((("authorization", f"Bearer {self.token}"),), None)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()
