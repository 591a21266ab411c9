"""Instance names and the stores behind them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from casfs.config import StoreConfig
from casfs.resource import validate_instance_name
from casfs.store.actioncache import ActionCacheStore
from casfs.store.blobstore import BlobStore
from casfs.store.partials import UploadLimits, UploadSessions


class UnknownInstance(LookupError):
    """The request names an instance this server does not serve."""


@dataclass(frozen=True, slots=True)
class Instance:
    """What the servicers need to serve one instance name."""

    name: str
    blobs: BlobStore
    uploads: UploadSessions
    actions: ActionCacheStore


class Instances:
    """The served instance names; names that share a store directory share one store.

    ``uploads`` bounds each store's partial uploads; without ``max_bytes`` of its own, a
    store's partial bytes are bounded by its ``max_size``.
    """

    def __init__(
        self, stores: Mapping[str, StoreConfig], *, uploads: UploadLimits | None = None
    ) -> None:
        uploads = uploads or UploadLimits()
        opened: dict[Path, tuple[BlobStore, UploadSessions, ActionCacheStore]] = {}
        self._by_name: dict[str, Instance] = {}
        for name, options in stores.items():
            validate_instance_name(name)
            key = options.path.resolve()
            if key not in opened:
                blobs = BlobStore(
                    key, max_size=options.max_size, evict=options.evict, fsync=options.fsync
                )
                opened[key] = (
                    blobs,
                    UploadSessions(
                        blobs,
                        limits=uploads
                        if uploads.max_bytes is not None
                        else dataclasses.replace(uploads, max_bytes=options.max_size),
                    ),
                    ActionCacheStore(key, fsync=options.fsync),
                )
            self._by_name[name] = Instance(name, *opened[key])

    @property
    def names(self) -> list[str]:
        """The served instance names."""
        return list(self._by_name)

    def get(self, name: str) -> Instance:
        """The instance called ``name``. Raises ``UnknownInstance``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownInstance(
                f"unknown instance name {name!r}; this server serves {self.names!r}"
            ) from None
