from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_LEVEL_UNSPECIFIED: _ClassVar[AuditLevel]
    AUDIT_LEVEL_OFF: _ClassVar[AuditLevel]
    AUDIT_LEVEL_SUMMARY: _ClassVar[AuditLevel]
    AUDIT_LEVEL_FULL: _ClassVar[AuditLevel]
    AUDIT_LEVEL_FULL_WITH_ALLOWED_SETS: _ClassVar[AuditLevel]
    AUDIT_LEVEL_KEY_EVENTS: _ClassVar[AuditLevel]

class LifecyclePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIFECYCLE_PHASE_UNSPECIFIED: _ClassVar[LifecyclePhase]
    LIFECYCLE_PHASE_ADDED: _ClassVar[LifecyclePhase]
    LIFECYCLE_PHASE_SCHEDULED: _ClassVar[LifecyclePhase]
    LIFECYCLE_PHASE_RESUMED: _ClassVar[LifecyclePhase]
    LIFECYCLE_PHASE_PREEMPTED: _ClassVar[LifecyclePhase]
    LIFECYCLE_PHASE_FINISHED: _ClassVar[LifecyclePhase]
    LIFECYCLE_PHASE_ABORTED: _ClassVar[LifecyclePhase]

class AuthStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTH_STATUS_UNSPECIFIED: _ClassVar[AuthStatus]
    AUTH_STATUS_NONE: _ClassVar[AuthStatus]
    AUTH_STATUS_OK: _ClassVar[AuthStatus]
    AUTH_STATUS_REJECTED: _ClassVar[AuthStatus]

class IdentitySource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDENTITY_SOURCE_UNSPECIFIED: _ClassVar[IdentitySource]
    IDENTITY_SOURCE_NONE: _ClassVar[IdentitySource]
    IDENTITY_SOURCE_API_KEY: _ClassVar[IdentitySource]
    IDENTITY_SOURCE_PROXY_HEADER: _ClassVar[IdentitySource]
    IDENTITY_SOURCE_CLAIMED: _ClassVar[IdentitySource]

class ContentSignal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTENT_SIGNAL_UNSPECIFIED: _ClassVar[ContentSignal]
    CONTENT_SIGNAL_SQL_INJECTION: _ClassVar[ContentSignal]
    CONTENT_SIGNAL_COMMAND_INJECTION: _ClassVar[ContentSignal]
    CONTENT_SIGNAL_PROMPT_INJECTION: _ClassVar[ContentSignal]
    CONTENT_SIGNAL_SECRET: _ClassVar[ContentSignal]
    CONTENT_SIGNAL_PII_EMAIL: _ClassVar[ContentSignal]
    CONTENT_SIGNAL_PII_PHONE: _ClassVar[ContentSignal]
    CONTENT_SIGNAL_PII_CARD: _ClassVar[ContentSignal]
    CONTENT_SIGNAL_PII_IBAN: _ClassVar[ContentSignal]
AUDIT_LEVEL_UNSPECIFIED: AuditLevel
AUDIT_LEVEL_OFF: AuditLevel
AUDIT_LEVEL_SUMMARY: AuditLevel
AUDIT_LEVEL_FULL: AuditLevel
AUDIT_LEVEL_FULL_WITH_ALLOWED_SETS: AuditLevel
AUDIT_LEVEL_KEY_EVENTS: AuditLevel
LIFECYCLE_PHASE_UNSPECIFIED: LifecyclePhase
LIFECYCLE_PHASE_ADDED: LifecyclePhase
LIFECYCLE_PHASE_SCHEDULED: LifecyclePhase
LIFECYCLE_PHASE_RESUMED: LifecyclePhase
LIFECYCLE_PHASE_PREEMPTED: LifecyclePhase
LIFECYCLE_PHASE_FINISHED: LifecyclePhase
LIFECYCLE_PHASE_ABORTED: LifecyclePhase
AUTH_STATUS_UNSPECIFIED: AuthStatus
AUTH_STATUS_NONE: AuthStatus
AUTH_STATUS_OK: AuthStatus
AUTH_STATUS_REJECTED: AuthStatus
IDENTITY_SOURCE_UNSPECIFIED: IdentitySource
IDENTITY_SOURCE_NONE: IdentitySource
IDENTITY_SOURCE_API_KEY: IdentitySource
IDENTITY_SOURCE_PROXY_HEADER: IdentitySource
IDENTITY_SOURCE_CLAIMED: IdentitySource
CONTENT_SIGNAL_UNSPECIFIED: ContentSignal
CONTENT_SIGNAL_SQL_INJECTION: ContentSignal
CONTENT_SIGNAL_COMMAND_INJECTION: ContentSignal
CONTENT_SIGNAL_PROMPT_INJECTION: ContentSignal
CONTENT_SIGNAL_SECRET: ContentSignal
CONTENT_SIGNAL_PII_EMAIL: ContentSignal
CONTENT_SIGNAL_PII_PHONE: ContentSignal
CONTENT_SIGNAL_PII_CARD: ContentSignal
CONTENT_SIGNAL_PII_IBAN: ContentSignal

class RequestLifecycle(_message.Message):
    __slots__ = ("phase", "num_prompt_tokens", "num_output_tokens", "finish_reason", "status", "max_tokens", "structured_output", "external_request_id", "provenance", "lora_adapter", "sampling")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    LORA_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    phase: LifecyclePhase
    num_prompt_tokens: int
    num_output_tokens: int
    finish_reason: str
    status: str
    max_tokens: int
    structured_output: bool
    external_request_id: str
    provenance: ModelProvenance
    lora_adapter: LoraAdapter
    sampling: SamplingParameters
    def __init__(self, phase: _Optional[_Union[LifecyclePhase, str]] = ..., num_prompt_tokens: _Optional[int] = ..., num_output_tokens: _Optional[int] = ..., finish_reason: _Optional[str] = ..., status: _Optional[str] = ..., max_tokens: _Optional[int] = ..., structured_output: _Optional[bool] = ..., external_request_id: _Optional[str] = ..., provenance: _Optional[_Union[ModelProvenance, _Mapping]] = ..., lora_adapter: _Optional[_Union[LoraAdapter, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParameters, _Mapping]] = ...) -> None: ...

class ModelProvenance(_message.Message):
    __slots__ = ("model", "model_path", "weights_sha256", "weights_files", "weights_bytes", "weights_digest_status", "revision", "dtype", "quantization", "tokenizer_sha256", "vllm_version", "hook_version", "generation", "weight_updates", "weight_version", "weights_digest_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FILES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_STATUS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SHA256_FIELD_NUMBER: _ClassVar[int]
    VLLM_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOOK_VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_UPDATES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_path: str
    weights_sha256: str
    weights_files: int
    weights_bytes: int
    weights_digest_status: str
    revision: str
    dtype: str
    quantization: str
    tokenizer_sha256: str
    vllm_version: str
    hook_version: str
    generation: int
    weight_updates: int
    weight_version: str
    weights_digest_ms: float
    def __init__(self, model: _Optional[str] = ..., model_path: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., weights_files: _Optional[int] = ..., weights_bytes: _Optional[int] = ..., weights_digest_status: _Optional[str] = ..., revision: _Optional[str] = ..., dtype: _Optional[str] = ..., quantization: _Optional[str] = ..., tokenizer_sha256: _Optional[str] = ..., vllm_version: _Optional[str] = ..., hook_version: _Optional[str] = ..., generation: _Optional[int] = ..., weight_updates: _Optional[int] = ..., weight_version: _Optional[str] = ..., weights_digest_ms: _Optional[float] = ...) -> None: ...

class LoraAdapter(_message.Message):
    __slots__ = ("name", "id", "path", "sha256", "bytes", "digest_status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: int
    path: str
    sha256: str
    bytes: int
    digest_status: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[int] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ..., bytes: _Optional[int] = ..., digest_status: _Optional[str] = ...) -> None: ...

class SamplingParameters(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "min_p", "seeded", "seed", "max_tokens", "min_tokens", "stop", "stop_token_ids", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "n", "structured_output", "logprobs", "allowed_token_ids", "bad_words", "ignore_eos")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    SEEDED_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BAD_WORDS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seeded: bool
    seed: int
    max_tokens: int
    min_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logit_bias: bool
    n: int
    structured_output: bool
    logprobs: int
    allowed_token_ids: bool
    bad_words: bool
    ignore_eos: bool
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., seeded: _Optional[bool] = ..., seed: _Optional[int] = ..., max_tokens: _Optional[int] = ..., min_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[int] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., logit_bias: _Optional[bool] = ..., n: _Optional[int] = ..., structured_output: _Optional[bool] = ..., logprobs: _Optional[int] = ..., allowed_token_ids: _Optional[bool] = ..., bad_words: _Optional[bool] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class AdminAction(_message.Message):
    __slots__ = ("method", "path", "action", "client_ip", "user", "tenant", "user_source", "tenant_source", "api_key_sha256", "auth_decision", "status_code", "latency_ms", "error", "user_agent", "arguments", "arguments_sha256", "arguments_bytes", "arguments_truncated", "result", "client_request_id", "ignored_identity_headers", "query")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TENANT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    API_KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    AUTH_DECISION_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IGNORED_IDENTITY_HEADERS_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    method: str
    path: str
    action: str
    client_ip: str
    user: str
    tenant: str
    user_source: IdentitySource
    tenant_source: IdentitySource
    api_key_sha256: str
    auth_decision: AuthStatus
    status_code: int
    latency_ms: float
    error: str
    user_agent: str
    arguments: str
    arguments_sha256: str
    arguments_bytes: int
    arguments_truncated: bool
    result: str
    client_request_id: str
    ignored_identity_headers: _containers.RepeatedScalarFieldContainer[str]
    query: str
    def __init__(self, method: _Optional[str] = ..., path: _Optional[str] = ..., action: _Optional[str] = ..., client_ip: _Optional[str] = ..., user: _Optional[str] = ..., tenant: _Optional[str] = ..., user_source: _Optional[_Union[IdentitySource, str]] = ..., tenant_source: _Optional[_Union[IdentitySource, str]] = ..., api_key_sha256: _Optional[str] = ..., auth_decision: _Optional[_Union[AuthStatus, str]] = ..., status_code: _Optional[int] = ..., latency_ms: _Optional[float] = ..., error: _Optional[str] = ..., user_agent: _Optional[str] = ..., arguments: _Optional[str] = ..., arguments_sha256: _Optional[str] = ..., arguments_bytes: _Optional[int] = ..., arguments_truncated: _Optional[bool] = ..., result: _Optional[str] = ..., client_request_id: _Optional[str] = ..., ignored_identity_headers: _Optional[_Iterable[str]] = ..., query: _Optional[str] = ...) -> None: ...

class GrammarCompiled(_message.Message):
    __slots__ = ("backend", "spec_type", "compile_ms", "error", "spec_sha256", "spec", "spec_size")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SPEC_TYPE_FIELD_NUMBER: _ClassVar[int]
    COMPILE_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SPEC_SHA256_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_SIZE_FIELD_NUMBER: _ClassVar[int]
    backend: str
    spec_type: str
    compile_ms: float
    error: str
    spec_sha256: str
    spec: str
    spec_size: int
    def __init__(self, backend: _Optional[str] = ..., spec_type: _Optional[str] = ..., compile_ms: _Optional[float] = ..., error: _Optional[str] = ..., spec_sha256: _Optional[str] = ..., spec: _Optional[str] = ..., spec_size: _Optional[int] = ...) -> None: ...

class StructuredOutputStep(_message.Message):
    __slots__ = ("step", "accepted_tokens", "allowed_tokens", "accepted", "terminated", "vocab_size", "allowed_per_token", "drafted_tokens", "accepted_draft_tokens", "rolled_back_draft_tokens", "allowed_set", "allowed_set_truncated")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SET_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SET_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    step: int
    accepted_tokens: _containers.RepeatedScalarFieldContainer[int]
    allowed_tokens: int
    accepted: bool
    terminated: bool
    vocab_size: int
    allowed_per_token: _containers.RepeatedScalarFieldContainer[int]
    drafted_tokens: int
    accepted_draft_tokens: int
    rolled_back_draft_tokens: int
    allowed_set: AllowedTokenSet
    allowed_set_truncated: bool
    def __init__(self, step: _Optional[int] = ..., accepted_tokens: _Optional[_Iterable[int]] = ..., allowed_tokens: _Optional[int] = ..., accepted: _Optional[bool] = ..., terminated: _Optional[bool] = ..., vocab_size: _Optional[int] = ..., allowed_per_token: _Optional[_Iterable[int]] = ..., drafted_tokens: _Optional[int] = ..., accepted_draft_tokens: _Optional[int] = ..., rolled_back_draft_tokens: _Optional[int] = ..., allowed_set: _Optional[_Union[AllowedTokenSet, _Mapping]] = ..., allowed_set_truncated: _Optional[bool] = ...) -> None: ...

class StructuredOutputSteps(_message.Message):
    __slots__ = ("request_ids", "request_index", "step", "token_counts", "tokens", "allowed_per_token", "accepted", "terminated", "vocab_size", "drafted_tokens", "accepted_draft_tokens", "rolled_back_draft_tokens", "allowed_sets", "allowed_set_truncated")
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SETS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SET_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    request_index: _containers.RepeatedScalarFieldContainer[int]
    step: _containers.RepeatedScalarFieldContainer[int]
    token_counts: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    allowed_per_token: _containers.RepeatedScalarFieldContainer[int]
    accepted: _containers.RepeatedScalarFieldContainer[bool]
    terminated: _containers.RepeatedScalarFieldContainer[bool]
    vocab_size: int
    drafted_tokens: _containers.RepeatedScalarFieldContainer[int]
    accepted_draft_tokens: _containers.RepeatedScalarFieldContainer[int]
    rolled_back_draft_tokens: _containers.RepeatedScalarFieldContainer[int]
    allowed_sets: _containers.RepeatedCompositeFieldContainer[AllowedTokenSet]
    allowed_set_truncated: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ..., request_index: _Optional[_Iterable[int]] = ..., step: _Optional[_Iterable[int]] = ..., token_counts: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[int]] = ..., allowed_per_token: _Optional[_Iterable[int]] = ..., accepted: _Optional[_Iterable[bool]] = ..., terminated: _Optional[_Iterable[bool]] = ..., vocab_size: _Optional[int] = ..., drafted_tokens: _Optional[_Iterable[int]] = ..., accepted_draft_tokens: _Optional[_Iterable[int]] = ..., rolled_back_draft_tokens: _Optional[_Iterable[int]] = ..., allowed_sets: _Optional[_Iterable[_Union[AllowedTokenSet, _Mapping]]] = ..., allowed_set_truncated: _Optional[_Iterable[bool]] = ...) -> None: ...

class AllowedTokenSet(_message.Message):
    __slots__ = ("allowed_ids", "disallowed_ids", "runs", "bitmask", "same_as_step")
    ALLOWED_IDS_FIELD_NUMBER: _ClassVar[int]
    DISALLOWED_IDS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    BITMASK_FIELD_NUMBER: _ClassVar[int]
    SAME_AS_STEP_FIELD_NUMBER: _ClassVar[int]
    allowed_ids: TokenIdDeltas
    disallowed_ids: TokenIdDeltas
    runs: TokenRuns
    bitmask: bytes
    same_as_step: int
    def __init__(self, allowed_ids: _Optional[_Union[TokenIdDeltas, _Mapping]] = ..., disallowed_ids: _Optional[_Union[TokenIdDeltas, _Mapping]] = ..., runs: _Optional[_Union[TokenRuns, _Mapping]] = ..., bitmask: _Optional[bytes] = ..., same_as_step: _Optional[int] = ...) -> None: ...

class TokenIdDeltas(_message.Message):
    __slots__ = ("deltas",)
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    deltas: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, deltas: _Optional[_Iterable[int]] = ...) -> None: ...

class TokenRuns(_message.Message):
    __slots__ = ("lengths",)
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class StructuredOutputSummary(_message.Message):
    __slots__ = ("backend", "steps", "accepted_tokens", "rejected_tokens", "allowed_tokens_min", "allowed_tokens_max", "allowed_tokens_mean", "terminated", "rollbacks", "first_rejected_token", "first_rejected_step", "drafted_tokens", "accepted_draft_tokens", "draft_rollbacks", "rolled_back_draft_tokens", "rejection_fate", "allowed_sets_over_step_cap", "allowed_sets_over_trail_cap", "allowed_set_bytes", "allowed_sets_over_backlog")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_TOKENS_MIN_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_TOKENS_MAX_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_TOKENS_MEAN_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    FIRST_REJECTED_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FIRST_REJECTED_STEP_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REJECTION_FATE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SETS_OVER_STEP_CAP_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SETS_OVER_TRAIL_CAP_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SET_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SETS_OVER_BACKLOG_FIELD_NUMBER: _ClassVar[int]
    backend: str
    steps: int
    accepted_tokens: int
    rejected_tokens: int
    allowed_tokens_min: int
    allowed_tokens_max: int
    allowed_tokens_mean: float
    terminated: bool
    rollbacks: int
    first_rejected_token: int
    first_rejected_step: int
    drafted_tokens: int
    accepted_draft_tokens: int
    draft_rollbacks: int
    rolled_back_draft_tokens: int
    rejection_fate: str
    allowed_sets_over_step_cap: int
    allowed_sets_over_trail_cap: int
    allowed_set_bytes: int
    allowed_sets_over_backlog: int
    def __init__(self, backend: _Optional[str] = ..., steps: _Optional[int] = ..., accepted_tokens: _Optional[int] = ..., rejected_tokens: _Optional[int] = ..., allowed_tokens_min: _Optional[int] = ..., allowed_tokens_max: _Optional[int] = ..., allowed_tokens_mean: _Optional[float] = ..., terminated: _Optional[bool] = ..., rollbacks: _Optional[int] = ..., first_rejected_token: _Optional[int] = ..., first_rejected_step: _Optional[int] = ..., drafted_tokens: _Optional[int] = ..., accepted_draft_tokens: _Optional[int] = ..., draft_rollbacks: _Optional[int] = ..., rolled_back_draft_tokens: _Optional[int] = ..., rejection_fate: _Optional[str] = ..., allowed_sets_over_step_cap: _Optional[int] = ..., allowed_sets_over_trail_cap: _Optional[int] = ..., allowed_set_bytes: _Optional[int] = ..., allowed_sets_over_backlog: _Optional[int] = ...) -> None: ...

class EngineStats(_message.Message):
    __slots__ = ("engine_index", "num_running_reqs", "num_waiting_reqs", "kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits", "prompt_tokens", "generation_tokens", "num_preempted_reqs", "spec_decode_num_drafts", "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens", "ttft_seconds_sum", "ttft_count", "inter_token_latency_seconds_sum", "inter_token_latency_count", "tpot_seconds_sum", "tpot_count", "finished_requests", "queue_time_seconds_sum", "e2e_latency_seconds_sum", "prefill_time_seconds_sum", "decode_time_seconds_sum", "cached_prompt_tokens")
    ENGINE_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_REQS_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_REQS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_PREEMPTED_REQS_FIELD_NUMBER: _ClassVar[int]
    SPEC_DECODE_NUM_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    SPEC_DECODE_NUM_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SPEC_DECODE_NUM_ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTFT_SECONDS_SUM_FIELD_NUMBER: _ClassVar[int]
    TTFT_COUNT_FIELD_NUMBER: _ClassVar[int]
    INTER_TOKEN_LATENCY_SECONDS_SUM_FIELD_NUMBER: _ClassVar[int]
    INTER_TOKEN_LATENCY_COUNT_FIELD_NUMBER: _ClassVar[int]
    TPOT_SECONDS_SUM_FIELD_NUMBER: _ClassVar[int]
    TPOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_SECONDS_SUM_FIELD_NUMBER: _ClassVar[int]
    E2E_LATENCY_SECONDS_SUM_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TIME_SECONDS_SUM_FIELD_NUMBER: _ClassVar[int]
    DECODE_TIME_SECONDS_SUM_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    engine_index: int
    num_running_reqs: int
    num_waiting_reqs: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    prompt_tokens: int
    generation_tokens: int
    num_preempted_reqs: int
    spec_decode_num_drafts: int
    spec_decode_num_draft_tokens: int
    spec_decode_num_accepted_tokens: int
    ttft_seconds_sum: float
    ttft_count: int
    inter_token_latency_seconds_sum: float
    inter_token_latency_count: int
    tpot_seconds_sum: float
    tpot_count: int
    finished_requests: int
    queue_time_seconds_sum: float
    e2e_latency_seconds_sum: float
    prefill_time_seconds_sum: float
    decode_time_seconds_sum: float
    cached_prompt_tokens: int
    def __init__(self, engine_index: _Optional[int] = ..., num_running_reqs: _Optional[int] = ..., num_waiting_reqs: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., prefix_cache_queries: _Optional[int] = ..., prefix_cache_hits: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., generation_tokens: _Optional[int] = ..., num_preempted_reqs: _Optional[int] = ..., spec_decode_num_drafts: _Optional[int] = ..., spec_decode_num_draft_tokens: _Optional[int] = ..., spec_decode_num_accepted_tokens: _Optional[int] = ..., ttft_seconds_sum: _Optional[float] = ..., ttft_count: _Optional[int] = ..., inter_token_latency_seconds_sum: _Optional[float] = ..., inter_token_latency_count: _Optional[int] = ..., tpot_seconds_sum: _Optional[float] = ..., tpot_count: _Optional[int] = ..., finished_requests: _Optional[int] = ..., queue_time_seconds_sum: _Optional[float] = ..., e2e_latency_seconds_sum: _Optional[float] = ..., prefill_time_seconds_sum: _Optional[float] = ..., decode_time_seconds_sum: _Optional[float] = ..., cached_prompt_tokens: _Optional[int] = ...) -> None: ...

class ContentSignals(_message.Message):
    __slots__ = ("ruleset", "prompt", "output")
    class PromptEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class OutputEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RULESET_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ruleset: str
    prompt: _containers.ScalarMap[str, int]
    output: _containers.ScalarMap[str, int]
    def __init__(self, ruleset: _Optional[str] = ..., prompt: _Optional[_Mapping[str, int]] = ..., output: _Optional[_Mapping[str, int]] = ...) -> None: ...

class HttpRequest(_message.Message):
    __slots__ = ("method", "path", "client_ip", "user", "model", "status_code", "auth_status", "api_key_sha256", "stream", "prompt", "output", "capture_policy", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "error", "user_agent", "response_bytes", "tenant", "vllm_request_id", "client_disconnected", "client_request_id", "auth_decision", "user_source", "tenant_source", "claimed_user", "ignored_identity_headers", "traceparent", "content_signals", "content_signals_unscanned_chars")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    AUTH_STATUS_FIELD_NUMBER: _ClassVar[int]
    API_KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_POLICY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    VLLM_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_DISCONNECTED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_DECISION_FIELD_NUMBER: _ClassVar[int]
    USER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TENANT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_USER_FIELD_NUMBER: _ClassVar[int]
    IGNORED_IDENTITY_HEADERS_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIGNALS_UNSCANNED_CHARS_FIELD_NUMBER: _ClassVar[int]
    method: str
    path: str
    client_ip: str
    user: str
    model: str
    status_code: int
    auth_status: str
    api_key_sha256: str
    stream: bool
    prompt: str
    output: str
    capture_policy: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float
    error: str
    user_agent: str
    response_bytes: int
    tenant: str
    vllm_request_id: str
    client_disconnected: bool
    client_request_id: str
    auth_decision: AuthStatus
    user_source: IdentitySource
    tenant_source: IdentitySource
    claimed_user: str
    ignored_identity_headers: _containers.RepeatedScalarFieldContainer[str]
    traceparent: str
    content_signals: ContentSignals
    content_signals_unscanned_chars: int
    def __init__(self, method: _Optional[str] = ..., path: _Optional[str] = ..., client_ip: _Optional[str] = ..., user: _Optional[str] = ..., model: _Optional[str] = ..., status_code: _Optional[int] = ..., auth_status: _Optional[str] = ..., api_key_sha256: _Optional[str] = ..., stream: _Optional[bool] = ..., prompt: _Optional[str] = ..., output: _Optional[str] = ..., capture_policy: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., latency_ms: _Optional[float] = ..., ttft_ms: _Optional[float] = ..., error: _Optional[str] = ..., user_agent: _Optional[str] = ..., response_bytes: _Optional[int] = ..., tenant: _Optional[str] = ..., vllm_request_id: _Optional[str] = ..., client_disconnected: _Optional[bool] = ..., client_request_id: _Optional[str] = ..., auth_decision: _Optional[_Union[AuthStatus, str]] = ..., user_source: _Optional[_Union[IdentitySource, str]] = ..., tenant_source: _Optional[_Union[IdentitySource, str]] = ..., claimed_user: _Optional[str] = ..., ignored_identity_headers: _Optional[_Iterable[str]] = ..., traceparent: _Optional[str] = ..., content_signals: _Optional[_Union[ContentSignals, _Mapping]] = ..., content_signals_unscanned_chars: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("time_unix_nano", "request_id", "truncated", "lifecycle", "grammar_compiled", "so_step", "so_summary", "engine_stats", "http", "custom", "admin", "so_steps")
    TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_COMPILED_FIELD_NUMBER: _ClassVar[int]
    SO_STEP_FIELD_NUMBER: _ClassVar[int]
    SO_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ENGINE_STATS_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    SO_STEPS_FIELD_NUMBER: _ClassVar[int]
    time_unix_nano: int
    request_id: str
    truncated: bool
    lifecycle: RequestLifecycle
    grammar_compiled: GrammarCompiled
    so_step: StructuredOutputStep
    so_summary: StructuredOutputSummary
    engine_stats: EngineStats
    http: HttpRequest
    custom: CustomEvent
    admin: AdminAction
    so_steps: StructuredOutputSteps
    def __init__(self, time_unix_nano: _Optional[int] = ..., request_id: _Optional[str] = ..., truncated: _Optional[bool] = ..., lifecycle: _Optional[_Union[RequestLifecycle, _Mapping]] = ..., grammar_compiled: _Optional[_Union[GrammarCompiled, _Mapping]] = ..., so_step: _Optional[_Union[StructuredOutputStep, _Mapping]] = ..., so_summary: _Optional[_Union[StructuredOutputSummary, _Mapping]] = ..., engine_stats: _Optional[_Union[EngineStats, _Mapping]] = ..., http: _Optional[_Union[HttpRequest, _Mapping]] = ..., custom: _Optional[_Union[CustomEvent, _Mapping]] = ..., admin: _Optional[_Union[AdminAction, _Mapping]] = ..., so_steps: _Optional[_Union[StructuredOutputSteps, _Mapping]] = ...) -> None: ...

class CustomEvent(_message.Message):
    __slots__ = ("name", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GapMarker(_message.Message):
    __slots__ = ("dropped_by_reason", "first_missing_seq", "last_missing_seq")
    class DroppedByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DROPPED_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    FIRST_MISSING_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_MISSING_SEQ_FIELD_NUMBER: _ClassVar[int]
    dropped_by_reason: _containers.ScalarMap[str, int]
    first_missing_seq: int
    last_missing_seq: int
    def __init__(self, dropped_by_reason: _Optional[_Mapping[str, int]] = ..., first_missing_seq: _Optional[int] = ..., last_missing_seq: _Optional[int] = ...) -> None: ...

class HookSelfTiming(_message.Message):
    __slots__ = ("hook_ns", "hook_calls", "steps", "request_steps", "sender_cpu_ns", "stat_logger_ns", "stat_logger_calls", "middleware_ns", "middleware_requests")
    HOOK_NS_FIELD_NUMBER: _ClassVar[int]
    HOOK_CALLS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_STEPS_FIELD_NUMBER: _ClassVar[int]
    SENDER_CPU_NS_FIELD_NUMBER: _ClassVar[int]
    STAT_LOGGER_NS_FIELD_NUMBER: _ClassVar[int]
    STAT_LOGGER_CALLS_FIELD_NUMBER: _ClassVar[int]
    MIDDLEWARE_NS_FIELD_NUMBER: _ClassVar[int]
    MIDDLEWARE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    hook_ns: int
    hook_calls: int
    steps: int
    request_steps: int
    sender_cpu_ns: int
    stat_logger_ns: int
    stat_logger_calls: int
    middleware_ns: int
    middleware_requests: int
    def __init__(self, hook_ns: _Optional[int] = ..., hook_calls: _Optional[int] = ..., steps: _Optional[int] = ..., request_steps: _Optional[int] = ..., sender_cpu_ns: _Optional[int] = ..., stat_logger_ns: _Optional[int] = ..., stat_logger_calls: _Optional[int] = ..., middleware_ns: _Optional[int] = ..., middleware_requests: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("source_id", "seq", "events", "gap", "process_role", "pid", "model", "epoch", "gpu_uuids", "self_timing", "applied_level", "config_epoch", "config_version", "instance_tag")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    PROCESS_ROLE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    SELF_TIMING_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LEVEL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_TAG_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    seq: int
    events: _containers.RepeatedCompositeFieldContainer[Event]
    gap: GapMarker
    process_role: str
    pid: int
    model: str
    epoch: int
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    self_timing: HookSelfTiming
    applied_level: AuditLevel
    config_epoch: int
    config_version: int
    instance_tag: bytes
    def __init__(self, source_id: _Optional[str] = ..., seq: _Optional[int] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., gap: _Optional[_Union[GapMarker, _Mapping]] = ..., process_role: _Optional[str] = ..., pid: _Optional[int] = ..., model: _Optional[str] = ..., epoch: _Optional[int] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., self_timing: _Optional[_Union[HookSelfTiming, _Mapping]] = ..., applied_level: _Optional[_Union[AuditLevel, str]] = ..., config_epoch: _Optional[int] = ..., config_version: _Optional[int] = ..., instance_tag: _Optional[bytes] = ...) -> None: ...
