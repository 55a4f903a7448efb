from vllm_audit.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RefusalReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFUSAL_REASON_UNSPECIFIED: _ClassVar[RefusalReason]
    REFUSAL_REASON_WAL_FULL: _ClassVar[RefusalReason]
    REFUSAL_REASON_DISK_FULL: _ClassVar[RefusalReason]
    REFUSAL_REASON_DISK_ERROR: _ClassVar[RefusalReason]
    REFUSAL_REASON_SHUTTING_DOWN: _ClassVar[RefusalReason]
    REFUSAL_REASON_INVALID: _ClassVar[RefusalReason]
    REFUSAL_REASON_TOO_BIG: _ClassVar[RefusalReason]
REFUSAL_REASON_UNSPECIFIED: RefusalReason
REFUSAL_REASON_WAL_FULL: RefusalReason
REFUSAL_REASON_DISK_FULL: RefusalReason
REFUSAL_REASON_DISK_ERROR: RefusalReason
REFUSAL_REASON_SHUTTING_DOWN: RefusalReason
REFUSAL_REASON_INVALID: RefusalReason
REFUSAL_REASON_TOO_BIG: RefusalReason

class HookConfig(_message.Message):
    __slots__ = ("level", "version", "epoch")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    level: _events_pb2.AuditLevel
    version: int
    epoch: int
    def __init__(self, level: _Optional[_Union[_events_pb2.AuditLevel, str]] = ..., version: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("source_id", "seq", "duplicate", "refused", "reason", "refusal", "epoch")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    seq: int
    duplicate: bool
    refused: bool
    reason: str
    refusal: RefusalReason
    epoch: int
    def __init__(self, source_id: _Optional[str] = ..., seq: _Optional[int] = ..., duplicate: _Optional[bool] = ..., refused: _Optional[bool] = ..., reason: _Optional[str] = ..., refusal: _Optional[_Union[RefusalReason, str]] = ..., epoch: _Optional[int] = ...) -> None: ...

class IngestReply(_message.Message):
    __slots__ = ("ack", "config")
    ACK_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    config: HookConfig
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., config: _Optional[_Union[HookConfig, _Mapping]] = ...) -> None: ...

class ReadAuditRequest(_message.Message):
    __slots__ = ("instance_key", "trail_ids", "include_events")
    INSTANCE_KEY_FIELD_NUMBER: _ClassVar[int]
    TRAIL_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    instance_key: bytes
    trail_ids: _containers.RepeatedScalarFieldContainer[str]
    include_events: bool
    def __init__(self, instance_key: _Optional[bytes] = ..., trail_ids: _Optional[_Iterable[str]] = ..., include_events: _Optional[bool] = ...) -> None: ...

class ReadAuditReply(_message.Message):
    __slots__ = ("request_id", "finish_reason", "grammar_backend", "grammar_spec_type", "grammar_error", "structured_output", "events", "events_omitted")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_BACKEND_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_SPEC_TYPE_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_ERROR_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    finish_reason: str
    grammar_backend: str
    grammar_spec_type: str
    grammar_error: str
    structured_output: _events_pb2.StructuredOutputSummary
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    events_omitted: int
    def __init__(self, request_id: _Optional[str] = ..., finish_reason: _Optional[str] = ..., grammar_backend: _Optional[str] = ..., grammar_spec_type: _Optional[str] = ..., grammar_error: _Optional[str] = ..., structured_output: _Optional[_Union[_events_pb2.StructuredOutputSummary, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ..., events_omitted: _Optional[int] = ...) -> None: ...
