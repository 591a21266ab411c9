"""``DirectorySource``: what a mount's tree view asks of wherever its Directories come
from, whatever protocol names them. ``TreeSource`` (``trees/source.py``) gives REAPI
Directories from a CAS, ``TvixTreeSource`` (``trees/tvixsource.py``) tvix castore
Directories from a DirectoryService; both hand out checked ``model.Directory`` values.
"""

from __future__ import annotations

from typing import Protocol

from casfs.digest import Digest
from casfs.trees.model import Directory


class DirectorySource(Protocol):
    """Checked Directories by digest, cached; every call raises only ``CasError``s."""

    def cached(self, digest: Digest) -> Directory | None:
        """The Directory if it is in the cache, else None (no I/O)."""
        ...

    async def directory(self, digest: Digest) -> Directory:
        """The checked Directory ``digest`` names: ``NotFound`` if missing, ``DataLoss``
        or ``BadDirectory`` if bad. Cancellation cancels this caller's call."""
        ...

    async def prefetch(self, root: Digest) -> int:
        """Fetch the subtree below ``root`` into the cache, within its budget; returns
        how many Directories came. Errors as ``directory``."""
        ...
