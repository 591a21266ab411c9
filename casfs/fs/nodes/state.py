"""``MountState``: what the nodes of one mount share, handed to every node method.

The clients, the block cache, the catalog, the upload trees and who may see what are the
mount's; the ``Kernel`` is the one way a node talks to the kernel outside a reply (pyfuse3's
notifications in the mount, a recorder in tests). No pyfuse3 in here.

Concurrency notes: everything here is used from the mount's trio thread only.
"""

from __future__ import annotations

import errno
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from casfs.cas.remote import BlobRemote
from casfs.fs.audience import Audience
from casfs.fs.blocks.cache import BlockCache
from casfs.fs.catalog import Catalog
from casfs.fs.namespace import Namespace
from casfs.fs.nodes.errors import NodeError
from casfs.fs.pagestores import PageStores
from casfs.fs.uploadentries import Entry
from casfs.fs.uploads import Uploads

if TYPE_CHECKING:
    from casfs.fs.assetcatalog import MountAssets
    from casfs.fs.treeview import TreeView


def _no_assets() -> MountAssets:
    """Asset names with no remote to ask (a ``MountState`` made without them)."""
    from casfs.fs.assetcatalog import MountAssets  # it imports fs/nodes: not at the top

    return MountAssets({})


class Kernel(Protocol):
    """The kernel's caches, as a node may change them. Both calls may wait for page locks
    that a READ holds until the trio thread answers it: callers run them in a worker
    thread. Both raise ``OSError`` if the kernel refuses (it does not know the inode)."""

    def notify_store(self, inode: int, offset: int, data: bytes) -> None:
        """Put ``data`` into the inode's page cache at ``offset``."""

    def invalidate_inode(self, inode: int) -> None:
        """Drop the inode's cached pages."""


@dataclass(eq=False)
class MountState:
    """The mount's shared state, as the nodes see it."""

    clients: Mapping[str, BlobRemote]  # by instance: REAPI's CasClient, or TvixRemote
    namespace: Namespace
    cache: BlockCache
    uploads: Uploads
    kernel: Kernel
    status: Callable[[], bytes]  # the value of user.casfs.status on the root
    read_only: bool = False
    trees: TreeView | None = None  # trees/ and actions/ (none: not shown)
    catalog: Catalog = field(default_factory=Catalog)
    # Small blobs this mount stored into the kernel's page cache, by inode.
    pages: PageStores = field(default_factory=PageStores)
    uid: int = 0
    gid: int = 0
    started_ns: int = field(default_factory=time.time_ns)
    # Entries of the upload trees by id, for the nodes that name them (weakly: an entry
    # removed from its tree and no longer open is gone, and its node answers ENOENT).
    entries: weakref.WeakValueDictionary[int, Entry] = field(
        default_factory=weakref.WeakValueDictionary
    )
    # Remote Asset names (assets/): Fetch and Push, what this mount knows of them.
    assets: MountAssets = field(default_factory=_no_assets)
    audience: Audience = field(init=False)

    def __post_init__(self) -> None:
        self.audience = Audience(self.uid, self.gid, self.uploads.roots)

    def refused(self) -> NodeError:
        """The error for a change to the read-only namespace."""
        return NodeError(errno.EROFS if self.read_only else errno.EACCES)

    def writable(self) -> None:
        """Refuse any change on a read-only mount."""
        if self.read_only:
            raise NodeError(errno.EROFS)
