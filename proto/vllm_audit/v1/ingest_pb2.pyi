from vllm_audit.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
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
