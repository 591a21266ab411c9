"""Which seen blobs a listing of ``blobs/`` shows to whom, when other users share the
mount (``--allow-other``). No FUSE in here.

The mount's owner and root see every blob the mount has seen. Anyone else sees only the
hashes they named themselves (a lookup of ``blobs/<hash>/<size>`` by their uid) and those
of committed files in ``uploads/`` whose mode lets them read: the others' bits, or the
group's bits for a caller whose primary gid is the mount's (supplementary groups are not
known here, so such a caller may see fewer, never more). A file of mode 0400 committed by
the owner therefore stays out of another user's ``ls blobs/``. This hides names only: a
blob is a read-only file that anyone who can name it may read, with the mount's
credentials, as the README says of ``--allow-other``. For the same reason the Directory
digest of a directory in ``uploads/`` (``user.casfs.digest``) is refused to another user
unless they may read every file below it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import cachetools

from casfs.digest import Digest
from casfs.fs.uploadentries import DirEntry, FileEntry


class Audience:
    """Remembers who named which blob, and filters listings of seen hashes."""

    def __init__(
        self,
        owner_uid: int,
        owner_gid: int,
        roots: Mapping[str, DirEntry],
        *,
        max_entries: int = 100_000,
    ) -> None:
        self._owner_uid = owner_uid
        self._owner_gid = owner_gid
        self._roots = roots  # the uploads/ trees, by instance
        # (uid, instance, hash) named by a uid that is not the owner's (bounded: oldest go)
        self._named: cachetools.LRUCache[tuple[int, str, str], bool] = cachetools.LRUCache(
            maxsize=max_entries
        )

    def sees_all(self, uid: int) -> bool:
        return uid in (0, self._owner_uid)

    def named(self, uid: int, instance: str, digest: Digest) -> None:
        """A lookup of the blob's name by ``uid``: that user knows it."""
        if not self.sees_all(uid):
            self._named[(uid, instance, digest.hash)] = True

    def visible(self, uid: int, gid: int, instance: str, hashes: Iterable[str]) -> Iterator[str]:
        """The ``hashes`` (seen in ``instance``) that a listing shows to ``uid``/``gid``."""
        if self.sees_all(uid):
            yield from hashes
            return
        readable = self._readable(gid, instance)
        for hash_ in hashes:
            if hash_ in readable or (uid, instance, hash_) in self._named:
                yield hash_

    def may_read_tree(self, uid: int, gid: int, directory: DirEntry) -> bool:
        """Whether every file below ``directory`` is readable to ``uid``/``gid``: its
        Directory digest leads to all their blobs, so only then may they have it."""
        if self.sees_all(uid):
            return True
        bit = self._bit(gid)
        stack = [directory]
        while stack:
            for child in stack.pop().children.values():
                if isinstance(child, DirEntry):
                    stack.append(child)
                elif isinstance(child, FileEntry) and not child.mode & bit:
                    return False
        return True

    def _bit(self, gid: int) -> int:
        """The read bit that applies to a caller who is not the owner."""
        return 0o040 if gid == self._owner_gid else 0o004

    def _readable(self, gid: int, instance: str) -> set[str]:
        """Hashes of committed upload files that ``gid`` (not the owner) may read.
        Directories in uploads/ are searchable by all (0755), so the file's mode decides."""
        bit = self._bit(gid)
        found: set[str] = set()
        root = self._roots.get(instance)
        stack = [root] if root is not None else []
        while stack:
            for child in stack.pop().children.values():
                if isinstance(child, DirEntry):
                    stack.append(child)
                elif isinstance(child, FileEntry) and child.digest and child.mode & bit:
                    found.add(child.digest.hash)
        return found
