"""A directory's Directory stored where its remote keeps Directories: the one place that
knows both encodings (``encode.py``'s REAPI one, ``tvixencode.py``'s tvix one), so that
``uploads/`` (``user.casfs.digest`` of a directory) stays the same for both protocols.
"""

from __future__ import annotations

from collections.abc import Sequence

from casfs.cas.remote import BlobRemote
from casfs.cas.tvixremote import TvixRemote
from casfs.digest import Digest
from casfs.trees import encode, tvixencode


async def store_directory(
    remote: BlobRemote, entries: Sequence[tuple[str, encode.Entry]]
) -> Digest:
    """Store the Directory of ``entries`` (whose files and directories are stored) and
    return its digest: on a REAPI CAS a REAPI Directory as a blob (the digest names that
    blob); on a tvix castore a tvix Directory by one DirectoryService Put with the
    Directories below it (the digest is tvix's pair: its hash, and the entries below it as
    the size). Errors are the calls'
    ``CasError``s (a tvix castore with no DirectoryService: ``Unimplemented``);
    cancellation cancels the call."""
    if isinstance(remote, TvixRemote):
        message = tvixencode.directory_message(entries)
        await remote.put_directory(message)
        return tvixencode.digest_of(message)
    return await remote.upload_bytes(encode.directory_bytes(entries))
