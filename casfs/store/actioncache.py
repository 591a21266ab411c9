"""Action results on disk: serialized ``ActionResult`` messages keyed by action digest."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from casfs.digest import Digest
from casfs.store.blobstore import disk_errors, fsync_dir
from casfs.store.errors import BlobNotFound


class ActionCacheStore:
    """A directory of action results. Writes are atomic (temporary file, then rename)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root / "ac"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.fsync = fsync

    def _path(self, action: Digest) -> Path:
        name = f"{action.hash}-{action.size}"
        return self.root / action.function.name_lower / action.hash[:2] / name

    def get(self, action: Digest) -> bytes:
        """The serialized result stored for ``action``. Raises ``BlobNotFound``."""
        try:
            return self._path(action).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no action result for {action}") from None

    def put(self, action: Digest, result: bytes) -> None:
        """Store (or replace) the serialized result for ``action``."""
        path = self._path(action)
        for directory in (path.parent.parent, path.parent):  # private, as the whole store
            directory.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            with (
                disk_errors(f"storing the action result for {action}"),
                open(os.open(tmp, flags, 0o600), "wb") as file,
            ):
                file.write(result)
                if self.fsync:
                    os.fsync(file.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        if self.fsync:
            fsync_dir(path.parent)
