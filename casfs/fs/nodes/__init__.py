"""The mount's nodes: every kind of file and directory answers FUSE's questions itself.

    base.py         ``Node``, ``Handle``, ``Attributes``, ``NodeError``: the protocol
    state.py        ``MountState``: what the nodes of one mount share; the ``Kernel`` seam
    directories.py  the root and instance directories, ``blobs/``, ``blobs/<fn>/``, hashes
    blobfile.py     ``blobs/.../<hash>/<size>``: a blob as a read-only file
    blobio.py       the blob side: existence probes, reads, small blobs into the page cache
    uploadtree.py   ``uploads/`` and the directories, files and symlinks below it
    uploadfiles.py  open files of ``uploads/``: read, write, commit, release
    digestdirs.py   ``trees/`` and ``actions/``, their ``<fn>/`` and ``<hash>/`` directories
    treenodes.py    a tree's directories, files and symlinks; files of given content
    actions.py      ``actions/<hash>/<size>/``, its ``outputs/`` and ``action/``
    tvixtrees.py    ``trees/`` of a tvix castore: ``trees/blake3/<hash>/``, a tvix Directory

``fs/operations.py`` is the pyfuse3 adapter in front of them.
"""

from casfs.fs.nodes.base import Attributes, Caller, Handle, Node, Opened, SetAttributes
from casfs.fs.nodes.blobfile import BlobFile
from casfs.fs.nodes.directories import ROOT, BlobsDir, FunctionDir, HashDir, InstanceDir
from casfs.fs.nodes.errors import NodeError
from casfs.fs.nodes.state import Kernel, MountState
from casfs.fs.nodes.uploadtree import UploadDir, UploadFile, UploadsDir, UploadSymlink

__all__ = [
    "ROOT",
    "Attributes",
    "BlobFile",
    "BlobsDir",
    "Caller",
    "FunctionDir",
    "Handle",
    "HashDir",
    "InstanceDir",
    "Kernel",
    "MountState",
    "Node",
    "NodeError",
    "Opened",
    "SetAttributes",
    "UploadDir",
    "UploadFile",
    "UploadSymlink",
    "UploadsDir",
]
