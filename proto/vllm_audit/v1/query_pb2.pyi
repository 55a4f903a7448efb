from vllm_audit.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrailState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAIL_STATE_UNSPECIFIED: _ClassVar[TrailState]
    TRAIL_STATE_ACTIVE: _ClassVar[TrailState]
    TRAIL_STATE_FINISHED: _ClassVar[TrailState]
    TRAIL_STATE_ABORTED: _ClassVar[TrailState]
    TRAIL_STATE_FAILED: _ClassVar[TrailState]
    TRAIL_STATE_INCOMPLETE: _ClassVar[TrailState]

class FinalisedBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINALISED_BY_UNSPECIFIED: _ClassVar[FinalisedBy]
    FINALISED_BY_COMPLETE: _ClassVar[FinalisedBy]
    FINALISED_BY_LINGER: _ClassVar[FinalisedBy]
    FINALISED_BY_EVICTION: _ClassVar[FinalisedBy]

class TrailHalf(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAIL_HALF_UNSPECIFIED: _ClassVar[TrailHalf]
    TRAIL_HALF_HTTP: _ClassVar[TrailHalf]
    TRAIL_HALF_ENGINE: _ClassVar[TrailHalf]

class WatchEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_EVENT_KIND_UNSPECIFIED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_FINAL: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_REVISED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_EVICTED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_DELETED: _ClassVar[WatchEventKind]
TRAIL_STATE_UNSPECIFIED: TrailState
TRAIL_STATE_ACTIVE: TrailState
TRAIL_STATE_FINISHED: TrailState
TRAIL_STATE_ABORTED: TrailState
TRAIL_STATE_FAILED: TrailState
TRAIL_STATE_INCOMPLETE: TrailState
FINALISED_BY_UNSPECIFIED: FinalisedBy
FINALISED_BY_COMPLETE: FinalisedBy
FINALISED_BY_LINGER: FinalisedBy
FINALISED_BY_EVICTION: FinalisedBy
TRAIL_HALF_UNSPECIFIED: TrailHalf
TRAIL_HALF_HTTP: TrailHalf
TRAIL_HALF_ENGINE: TrailHalf
WATCH_EVENT_KIND_UNSPECIFIED: WatchEventKind
WATCH_EVENT_KIND_FINAL: WatchEventKind
WATCH_EVENT_KIND_REVISED: WatchEventKind
WATCH_EVENT_KIND_EVICTED: WatchEventKind
WATCH_EVENT_KIND_DELETED: WatchEventKind

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status", "uptime_s", "gpu_available", "kafka_configured", "kafka_connected", "connected_sources")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    GPU_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    KAFKA_CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    KAFKA_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SOURCES_FIELD_NUMBER: _ClassVar[int]
    status: str
    uptime_s: float
    gpu_available: bool
    kafka_configured: bool
    kafka_connected: bool
    connected_sources: int
    def __init__(self, status: _Optional[str] = ..., uptime_s: _Optional[float] = ..., gpu_available: _Optional[bool] = ..., kafka_configured: _Optional[bool] = ..., kafka_connected: _Optional[bool] = ..., connected_sources: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("batches_ingested", "events_ingested", "duplicate_batches", "hook_dropped_by_reason", "trails_active", "trails_finished", "trails_evicted", "trail_store_bytes", "wal_bytes", "records_published", "agent_dropped_by_reason", "latest_engine_stats", "audit_level", "source_levels", "level_mismatch_sources")
    class HookDroppedByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class AgentDroppedByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BATCHES_INGESTED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_INGESTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    HOOK_DROPPED_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    TRAILS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    TRAILS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    TRAILS_EVICTED_FIELD_NUMBER: _ClassVar[int]
    TRAIL_STORE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    AGENT_DROPPED_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    LATEST_ENGINE_STATS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LEVELS_FIELD_NUMBER: _ClassVar[int]
    LEVEL_MISMATCH_SOURCES_FIELD_NUMBER: _ClassVar[int]
    batches_ingested: int
    events_ingested: int
    duplicate_batches: int
    hook_dropped_by_reason: _containers.ScalarMap[str, int]
    trails_active: int
    trails_finished: int
    trails_evicted: int
    trail_store_bytes: int
    wal_bytes: int
    records_published: int
    agent_dropped_by_reason: _containers.ScalarMap[str, int]
    latest_engine_stats: _events_pb2.EngineStats
    audit_level: _events_pb2.AuditLevel
    source_levels: _containers.RepeatedCompositeFieldContainer[SourceLevel]
    level_mismatch_sources: int
    def __init__(self, batches_ingested: _Optional[int] = ..., events_ingested: _Optional[int] = ..., duplicate_batches: _Optional[int] = ..., hook_dropped_by_reason: _Optional[_Mapping[str, int]] = ..., trails_active: _Optional[int] = ..., trails_finished: _Optional[int] = ..., trails_evicted: _Optional[int] = ..., trail_store_bytes: _Optional[int] = ..., wal_bytes: _Optional[int] = ..., records_published: _Optional[int] = ..., agent_dropped_by_reason: _Optional[_Mapping[str, int]] = ..., latest_engine_stats: _Optional[_Union[_events_pb2.EngineStats, _Mapping]] = ..., audit_level: _Optional[_Union[_events_pb2.AuditLevel, str]] = ..., source_levels: _Optional[_Iterable[_Union[SourceLevel, _Mapping]]] = ..., level_mismatch_sources: _Optional[int] = ...) -> None: ...

class SourceLevel(_message.Message):
    __slots__ = ("source_id", "process_role", "applied_level", "config_epoch", "config_version", "connected", "mismatch")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_ROLE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LEVEL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    MISMATCH_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    process_role: str
    applied_level: _events_pb2.AuditLevel
    config_epoch: int
    config_version: int
    connected: bool
    mismatch: bool
    def __init__(self, source_id: _Optional[str] = ..., process_role: _Optional[str] = ..., applied_level: _Optional[_Union[_events_pb2.AuditLevel, str]] = ..., config_epoch: _Optional[int] = ..., config_version: _Optional[int] = ..., connected: _Optional[bool] = ..., mismatch: _Optional[bool] = ...) -> None: ...

class TrailSummary(_message.Message):
    __slots__ = ("request_id", "engine_request_ids", "state", "created_unix_ms", "finished_unix_ms", "model", "user", "client_ip", "status_code", "auth_status", "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "grammar_backend", "grammar_spec_type", "grammar_error", "structured_output", "audit_level", "num_events", "prompt", "output", "api_key_sha256", "error", "stream", "preemptions", "tenant", "client_disconnected", "client_request_id", "revision", "finalised_by", "incomplete", "source_ids", "http_method", "http_path", "user_agent", "response_bytes", "vllm_request_id", "grammar_compile_ms", "grammar_spec_sha256", "max_tokens", "capture_policy", "truncated_events", "auth_decision", "user_source", "tenant_source", "claimed_user", "ignored_identity_headers", "model_provenance", "lora_adapter", "sampling", "traceparent", "content_signals", "content_signals_unscanned_chars", "content")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENGINE_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    AUTH_STATUS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_BACKEND_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_SPEC_TYPE_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_ERROR_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_LEVEL_FIELD_NUMBER: _ClassVar[int]
    NUM_EVENTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    API_KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_DISCONNECTED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FINALISED_BY_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    HTTP_METHOD_FIELD_NUMBER: _ClassVar[int]
    HTTP_PATH_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    VLLM_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_COMPILE_MS_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_SPEC_SHA256_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_POLICY_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    AUTH_DECISION_FIELD_NUMBER: _ClassVar[int]
    USER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TENANT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_USER_FIELD_NUMBER: _ClassVar[int]
    IGNORED_IDENTITY_HEADERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    LORA_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIGNALS_UNSCANNED_CHARS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    engine_request_ids: _containers.RepeatedScalarFieldContainer[str]
    state: TrailState
    created_unix_ms: int
    finished_unix_ms: int
    model: str
    user: str
    client_ip: str
    status_code: int
    auth_status: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float
    grammar_backend: str
    grammar_spec_type: str
    grammar_error: str
    structured_output: _events_pb2.StructuredOutputSummary
    audit_level: _events_pb2.AuditLevel
    num_events: int
    prompt: str
    output: str
    api_key_sha256: str
    error: str
    stream: bool
    preemptions: int
    tenant: str
    client_disconnected: bool
    client_request_id: str
    revision: int
    finalised_by: FinalisedBy
    incomplete: _containers.RepeatedScalarFieldContainer[TrailHalf]
    source_ids: _containers.RepeatedScalarFieldContainer[str]
    http_method: str
    http_path: str
    user_agent: str
    response_bytes: int
    vllm_request_id: str
    grammar_compile_ms: float
    grammar_spec_sha256: str
    max_tokens: int
    capture_policy: str
    truncated_events: int
    auth_decision: _events_pb2.AuthStatus
    user_source: _events_pb2.IdentitySource
    tenant_source: _events_pb2.IdentitySource
    claimed_user: str
    ignored_identity_headers: _containers.RepeatedScalarFieldContainer[str]
    model_provenance: _events_pb2.ModelProvenance
    lora_adapter: _events_pb2.LoraAdapter
    sampling: _events_pb2.SamplingParameters
    traceparent: str
    content_signals: _events_pb2.ContentSignals
    content_signals_unscanned_chars: int
    content: SealedContent
    def __init__(self, request_id: _Optional[str] = ..., engine_request_ids: _Optional[_Iterable[str]] = ..., state: _Optional[_Union[TrailState, str]] = ..., created_unix_ms: _Optional[int] = ..., finished_unix_ms: _Optional[int] = ..., model: _Optional[str] = ..., user: _Optional[str] = ..., client_ip: _Optional[str] = ..., status_code: _Optional[int] = ..., auth_status: _Optional[str] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., latency_ms: _Optional[float] = ..., ttft_ms: _Optional[float] = ..., grammar_backend: _Optional[str] = ..., grammar_spec_type: _Optional[str] = ..., grammar_error: _Optional[str] = ..., structured_output: _Optional[_Union[_events_pb2.StructuredOutputSummary, _Mapping]] = ..., audit_level: _Optional[_Union[_events_pb2.AuditLevel, str]] = ..., num_events: _Optional[int] = ..., prompt: _Optional[str] = ..., output: _Optional[str] = ..., api_key_sha256: _Optional[str] = ..., error: _Optional[str] = ..., stream: _Optional[bool] = ..., preemptions: _Optional[int] = ..., tenant: _Optional[str] = ..., client_disconnected: _Optional[bool] = ..., client_request_id: _Optional[str] = ..., revision: _Optional[int] = ..., finalised_by: _Optional[_Union[FinalisedBy, str]] = ..., incomplete: _Optional[_Iterable[_Union[TrailHalf, str]]] = ..., source_ids: _Optional[_Iterable[str]] = ..., http_method: _Optional[str] = ..., http_path: _Optional[str] = ..., user_agent: _Optional[str] = ..., response_bytes: _Optional[int] = ..., vllm_request_id: _Optional[str] = ..., grammar_compile_ms: _Optional[float] = ..., grammar_spec_sha256: _Optional[str] = ..., max_tokens: _Optional[int] = ..., capture_policy: _Optional[str] = ..., truncated_events: _Optional[int] = ..., auth_decision: _Optional[_Union[_events_pb2.AuthStatus, str]] = ..., user_source: _Optional[_Union[_events_pb2.IdentitySource, str]] = ..., tenant_source: _Optional[_Union[_events_pb2.IdentitySource, str]] = ..., claimed_user: _Optional[str] = ..., ignored_identity_headers: _Optional[_Iterable[str]] = ..., model_provenance: _Optional[_Union[_events_pb2.ModelProvenance, _Mapping]] = ..., lora_adapter: _Optional[_Union[_events_pb2.LoraAdapter, _Mapping]] = ..., sampling: _Optional[_Union[_events_pb2.SamplingParameters, _Mapping]] = ..., traceparent: _Optional[str] = ..., content_signals: _Optional[_Union[_events_pb2.ContentSignals, _Mapping]] = ..., content_signals_unscanned_chars: _Optional[int] = ..., content: _Optional[_Union[SealedContent, _Mapping]] = ...) -> None: ...

class SealedContent(_message.Message):
    __slots__ = ("scheme", "key_id", "period_end_ms", "nonce", "ciphertext", "erased", "erasure")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    ERASED_FIELD_NUMBER: _ClassVar[int]
    ERASURE_FIELD_NUMBER: _ClassVar[int]
    scheme: str
    key_id: str
    period_end_ms: int
    nonce: str
    ciphertext: str
    erased: bool
    erasure: str
    def __init__(self, scheme: _Optional[str] = ..., key_id: _Optional[str] = ..., period_end_ms: _Optional[int] = ..., nonce: _Optional[str] = ..., ciphertext: _Optional[str] = ..., erased: _Optional[bool] = ..., erasure: _Optional[str] = ...) -> None: ...

class ListTrailsRequest(_message.Message):
    __slots__ = ("model", "user", "state", "finish_reason", "since_unix_ms", "until_unix_ms", "structured_only", "page_size", "page_token", "client_request_id", "tenant", "grammar_backend")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_BACKEND_FIELD_NUMBER: _ClassVar[int]
    model: str
    user: str
    state: TrailState
    finish_reason: str
    since_unix_ms: int
    until_unix_ms: int
    structured_only: bool
    page_size: int
    page_token: str
    client_request_id: str
    tenant: str
    grammar_backend: str
    def __init__(self, model: _Optional[str] = ..., user: _Optional[str] = ..., state: _Optional[_Union[TrailState, str]] = ..., finish_reason: _Optional[str] = ..., since_unix_ms: _Optional[int] = ..., until_unix_ms: _Optional[int] = ..., structured_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., client_request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., grammar_backend: _Optional[str] = ...) -> None: ...

class ListTrailsResponse(_message.Message):
    __slots__ = ("trails", "next_page_token")
    TRAILS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    trails: _containers.RepeatedCompositeFieldContainer[TrailSummary]
    next_page_token: str
    def __init__(self, trails: _Optional[_Iterable[_Union[TrailSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTrailRequest(_message.Message):
    __slots__ = ("request_id", "include_events", "event_offset", "event_limit")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    EVENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    include_events: bool
    event_offset: int
    event_limit: int
    def __init__(self, request_id: _Optional[str] = ..., include_events: _Optional[bool] = ..., event_offset: _Optional[int] = ..., event_limit: _Optional[int] = ...) -> None: ...

class GetTrailResponse(_message.Message):
    __slots__ = ("summary", "events", "events_total", "next_event_offset")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NEXT_EVENT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    summary: TrailSummary
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    events_total: int
    next_event_offset: int
    def __init__(self, summary: _Optional[_Union[TrailSummary, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ..., events_total: _Optional[int] = ..., next_event_offset: _Optional[int] = ...) -> None: ...

class WatchTrailsRequest(_message.Message):
    __slots__ = ("model", "user", "state", "tenant", "structured_only", "replay")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_ONLY_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    model: str
    user: str
    state: TrailState
    tenant: str
    structured_only: bool
    replay: bool
    def __init__(self, model: _Optional[str] = ..., user: _Optional[str] = ..., state: _Optional[_Union[TrailState, str]] = ..., tenant: _Optional[str] = ..., structured_only: _Optional[bool] = ..., replay: _Optional[bool] = ...) -> None: ...

class WatchTrailsResponse(_message.Message):
    __slots__ = ("trail", "kind")
    TRAIL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    trail: TrailSummary
    kind: WatchEventKind
    def __init__(self, trail: _Optional[_Union[TrailSummary, _Mapping]] = ..., kind: _Optional[_Union[WatchEventKind, str]] = ...) -> None: ...

class ExportTrailsRequest(_message.Message):
    __slots__ = ("model", "user", "state", "finish_reason", "since_unix_ms", "until_unix_ms", "structured_only", "client_request_id", "tenant", "grammar_backend")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_ONLY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_BACKEND_FIELD_NUMBER: _ClassVar[int]
    model: str
    user: str
    state: TrailState
    finish_reason: str
    since_unix_ms: int
    until_unix_ms: int
    structured_only: bool
    client_request_id: str
    tenant: str
    grammar_backend: str
    def __init__(self, model: _Optional[str] = ..., user: _Optional[str] = ..., state: _Optional[_Union[TrailState, str]] = ..., finish_reason: _Optional[str] = ..., since_unix_ms: _Optional[int] = ..., until_unix_ms: _Optional[int] = ..., structured_only: _Optional[bool] = ..., client_request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., grammar_backend: _Optional[str] = ...) -> None: ...

class ExportTrailsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, records: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AggregatesRequest(_message.Message):
    __slots__ = ("tenant", "user", "model", "since_unix_ms", "until_unix_ms", "group_by")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    user: str
    model: str
    since_unix_ms: int
    until_unix_ms: int
    group_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant: _Optional[str] = ..., user: _Optional[str] = ..., model: _Optional[str] = ..., since_unix_ms: _Optional[int] = ..., until_unix_ms: _Optional[int] = ..., group_by: _Optional[_Iterable[str]] = ...) -> None: ...

class AggregateRow(_message.Message):
    __slots__ = ("tenant", "user", "model", "day", "requests", "input_tokens", "output_tokens", "errors", "cost", "unpriced_requests")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    user: str
    model: str
    day: str
    requests: int
    input_tokens: int
    output_tokens: int
    errors: int
    cost: float
    unpriced_requests: int
    def __init__(self, tenant: _Optional[str] = ..., user: _Optional[str] = ..., model: _Optional[str] = ..., day: _Optional[str] = ..., requests: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., errors: _Optional[int] = ..., cost: _Optional[float] = ..., unpriced_requests: _Optional[int] = ...) -> None: ...

class AggregatesResponse(_message.Message):
    __slots__ = ("rows", "currency")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[AggregateRow]
    currency: str
    def __init__(self, rows: _Optional[_Iterable[_Union[AggregateRow, _Mapping]]] = ..., currency: _Optional[str] = ...) -> None: ...

class ListFindingsRequest(_message.Message):
    __slots__ = ("rule", "subject", "subject_kind", "since_unix_ms", "until_unix_ms", "tenant", "severity", "page_size")
    RULE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    rule: str
    subject: str
    subject_kind: str
    since_unix_ms: int
    until_unix_ms: int
    tenant: str
    severity: str
    page_size: int
    def __init__(self, rule: _Optional[str] = ..., subject: _Optional[str] = ..., subject_kind: _Optional[str] = ..., since_unix_ms: _Optional[int] = ..., until_unix_ms: _Optional[int] = ..., tenant: _Optional[str] = ..., severity: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListFindingsResponse(_message.Message):
    __slots__ = ("findings",)
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    findings: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, findings: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SetAuditLevelRequest(_message.Message):
    __slots__ = ("level",)
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: _events_pb2.AuditLevel
    def __init__(self, level: _Optional[_Union[_events_pb2.AuditLevel, str]] = ...) -> None: ...

class SetAuditLevelResponse(_message.Message):
    __slots__ = ("level", "version", "sources_notified")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCES_NOTIFIED_FIELD_NUMBER: _ClassVar[int]
    level: _events_pb2.AuditLevel
    version: int
    sources_notified: int
    def __init__(self, level: _Optional[_Union[_events_pb2.AuditLevel, str]] = ..., version: _Optional[int] = ..., sources_notified: _Optional[int] = ...) -> None: ...

class DeleteTrailRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class DeleteTrailResponse(_message.Message):
    __slots__ = ("summary",)
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    summary: TrailSummary
    def __init__(self, summary: _Optional[_Union[TrailSummary, _Mapping]] = ...) -> None: ...

class ClearTrailsRequest(_message.Message):
    __slots__ = ("confirm",)
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    confirm: str
    def __init__(self, confirm: _Optional[str] = ...) -> None: ...

class ClearTrailsResponse(_message.Message):
    __slots__ = ("deleted", "kept_open")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    KEPT_OPEN_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    kept_open: int
    def __init__(self, deleted: _Optional[int] = ..., kept_open: _Optional[int] = ...) -> None: ...

class EraseSubjectRequest(_message.Message):
    __slots__ = ("user", "tenant", "reason")
    USER_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user: str
    tenant: str
    reason: str
    def __init__(self, user: _Optional[str] = ..., tenant: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EraseSubjectResponse(_message.Message):
    __slots__ = ("keys_destroyed", "erasure_seq", "subject_hmac")
    KEYS_DESTROYED_FIELD_NUMBER: _ClassVar[int]
    ERASURE_SEQ_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_HMAC_FIELD_NUMBER: _ClassVar[int]
    keys_destroyed: int
    erasure_seq: int
    subject_hmac: str
    def __init__(self, keys_destroyed: _Optional[int] = ..., erasure_seq: _Optional[int] = ..., subject_hmac: _Optional[str] = ...) -> None: ...
