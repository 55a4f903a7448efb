from vllm_audit.v1 import events_pb2 as _events_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HookConfig(_message.Message):
    __slots__ = ("level", "version")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    level: _events_pb2.AuditLevel
    version: int
    def __init__(self, level: _Optional[_Union[_events_pb2.AuditLevel, str]] = ..., version: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("source_id", "seq", "duplicate", "refused", "reason")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    seq: int
    duplicate: bool
    refused: bool
    reason: str
    def __init__(self, source_id: _Optional[str] = ..., seq: _Optional[int] = ..., duplicate: _Optional[bool] = ..., refused: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class IngestReply(_message.Message):
    __slots__ = ("ack", "config")
    ACK_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    config: HookConfig
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., config: _Optional[_Union[HookConfig, _Mapping]] = ...) -> None: ...
