"""What the on-disk store can refuse; ``server/`` maps these to gRPC status codes."""

from __future__ import annotations


class StoreError(Exception):
    """A store operation failed."""


class BlobNotFound(StoreError):
    """The blob, upload session or action result is not in the store."""


class SizeMismatch(StoreError):
    """The data is longer or shorter than the digest's size."""


class HashMismatch(StoreError):
    """The data's hash is not the digest's hash: nothing was stored."""


class StoreFull(StoreError):
    """The disk is full, or the store's configured maximum size is reached."""


class OffsetMismatch(StoreError):
    """A write did not continue where the upload session stands."""

    def __init__(self, message: str, committed: int) -> None:
        super().__init__(message)
        self.committed = committed


class UploadBusy(StoreError):
    """Another stream is writing the same upload session right now."""


class Unsupported(StoreError):
    """The store cannot handle this digest function or compressor."""
