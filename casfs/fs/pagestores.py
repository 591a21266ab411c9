"""What this mount put into the kernel's page cache itself: the inodes whose whole small
blob it stored at open (FUSE_NOTIFY_STORE, ``nodes/blobio.store_small_blob``).

A store costs a worker thread's round trip and a copy of the blob into the kernel, and an
open with ``keep_cache`` keeps the pages, so storing again at every open of the same file
only repeats it: a warm ``tar`` of a tree opens every file once more, and each store was
most of its open's cost. So a store is remembered by inode, with the digest stored, and
skipped while remembered. Forgetting is what keeps it true:

- the kernel forgets the inode (FORGET): its pages went with it; inode numbers are never
  reused, but the entry would stay forever (``forget``);
- the mount drops the inode's pages itself (``invalidate_inode``, after a failed write to
  a blob's name), or the inode's content changes (an ``uploads/`` file rewritten and
  committed anew: the digest differs, so ``holds`` is false).

Pages dropped without this module knowing are not wrong bytes, only a READ more: the
kernel evicting them on its own (memory pressure), or an open answered without
``keep_cache`` (a write open of ``blobs/<hash>/<size>``), which drops them. A later read
is then a READ, answered from the block cache as any read is; a remembered store is only
ever of the digest's own bytes. Nothing here does I/O;
everything runs in the mount's trio thread.
"""

from __future__ import annotations

from casfs.digest import Digest


class PageStores:
    """Inode -> the digest of the small blob stored whole into its page cache."""

    def __init__(self) -> None:
        self._stored: dict[int, Digest] = {}

    def __len__(self) -> int:
        return len(self._stored)

    def holds(self, inode: int, digest: Digest) -> bool:
        """Whether ``digest``'s bytes were stored for ``inode`` and not dropped since."""
        return self._stored.get(inode) == digest

    def stored(self, inode: int, digest: Digest) -> None:
        self._stored[inode] = digest

    def forget(self, inode: int) -> None:
        """The inode's pages are gone (or about to be): store again at the next open."""
        self._stored.pop(inode, None)
