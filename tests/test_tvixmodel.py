"""The adapter from tvix castore Directories to the checked tree model (pure, no I/O):
what ``tvixencode`` writes comes back as the same entries, and what breaks a rule or a
limit is ``BadDirectory``."""

from __future__ import annotations

import os

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casfs import tvix_directory
from casfs._proto.tvix import castore_pb2
from casfs.digest import Digest, DigestFunction
from casfs.trees.encode import DirectoryEntry, Entry, FileEntry, SymlinkEntry
from casfs.trees.model import BadDirectory, TreeLimits
from casfs.trees.tvixencode import digest_of, directory_message
from casfs.trees.tvixmodel import from_tvix

BLAKE3 = DigestFunction.BLAKE3
NAMES = st.text(
    st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=8
).filter(lambda n: n not in (".", ".."))


def _entry(kind: int, n: int) -> Entry:
    digest = Digest(blake3.blake3(str(n).encode()).hexdigest(), n, BLAKE3)
    if kind == 0:
        return FileEntry(digest, n % 2 == 0)
    if kind == 1:
        return DirectoryEntry(digest)
    return SymlinkEntry(f"target-{n}")


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(NAMES, st.tuples(st.integers(0, 2), st.integers(0, 1000)), max_size=12))
def test_what_is_encoded_comes_back(spec: dict[str, tuple[int, int]]) -> None:
    entries = [(name, _entry(kind, n)) for name, (kind, n) in spec.items()]
    message = directory_message(entries)
    tvix_directory.check(message)  # what casfs serve's Put checks
    checked = from_tvix(message)
    assert checked.directory.digest == digest_of(message)
    back = checked.directory.entries
    assert sorted(back) == sorted(spec)
    for name, entry in entries:
        node = back[name]
        if isinstance(entry, SymlinkEntry):
            assert node.target == entry.target  # type: ignore[union-attr]
        else:
            assert node.digest == entry.digest  # type: ignore[union-attr]
    below = sum(e.digest.size for _, e in entries if isinstance(e, DirectoryEntry))
    assert checked.directory.digest.size == len(entries) + below


def _link(name: bytes) -> castore_pb2.SymlinkNode:
    return castore_pb2.SymlinkNode(name=name, target=b"t")


@pytest.mark.parametrize(
    "message",
    [
        castore_pb2.Directory(symlinks=[_link(b"..")]),
        castore_pb2.Directory(symlinks=[_link(b"b"), _link(b"a")]),
        castore_pb2.Directory(symlinks=[_link(b"\xc3")]),  # not UTF-8
        castore_pb2.Directory(
            directories=[castore_pb2.DirectoryNode(name=b"d", digest=bytes(32), size=1 << 63)]
        ),
        castore_pb2.Directory(symlinks=[_link(b"%d" % n) for n in range(4)]),  # > max_entries
    ],
)
def test_bad_directories_are_refused(message: castore_pb2.Directory) -> None:
    with pytest.raises(BadDirectory):
        from_tvix(message, TreeLimits(max_entries=3))


def test_a_target_of_any_bytes_comes_back_as_those_bytes() -> None:
    target = b"../\xff\xc3/x"  # not UTF-8: data, not a name
    message = castore_pb2.Directory(symlinks=[castore_pb2.SymlinkNode(name=b"l", target=target)])
    (node,) = from_tvix(message).directory.symlinks
    assert os.fsencode(node.target) == target
    assert directory_message([("l", SymlinkEntry(node.target))]) == message
