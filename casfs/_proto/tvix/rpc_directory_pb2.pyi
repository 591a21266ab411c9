from casfs._proto.tvix import castore_pb2 as _castore_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetDirectoryRequest(_message.Message):
    __slots__ = ("digest", "recursive")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    recursive: bool
    def __init__(self, digest: _Optional[bytes] = ..., recursive: _Optional[bool] = ...) -> None: ...

class PutDirectoryResponse(_message.Message):
    __slots__ = ("root_digest",)
    ROOT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    root_digest: bytes
    def __init__(self, root_digest: _Optional[bytes] = ...) -> None: ...
