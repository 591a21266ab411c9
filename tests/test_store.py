"""The on-disk store alone: verification, crash safety, concurrent uploads, eviction."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from casfs.digest import Digest
from casfs.resource import Compressor
from casfs.store.blobstore import BlobStore
from casfs.store.errors import BlobNotFound, HashMismatch, OffsetMismatch, SizeMismatch
from casfs.store.partials import UploadSessions


def test_put_verifies_and_nothing_partial_is_visible(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"payload"
    digest = Digest.of_bytes(data)
    with pytest.raises(HashMismatch):
        store.put(digest, b"payloaD")
    with pytest.raises(SizeMismatch):
        store.put(digest, b"pay")
    assert not store.contains(digest)
    store.put(digest, data)
    with store.open(digest) as file:
        assert file.read() == data
    assert store.contains(Digest.empty()) and store.open(Digest.empty()).read() == b""
    with pytest.raises(BlobNotFound):
        store.open(Digest.of_bytes(b"absent"))
    assert not list(store.tmp_dir.iterdir())


def test_leftovers_of_a_crash_are_never_blobs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    file, leftover = store.temp_file()
    with file:
        file.write(b"half a blob")
    reopened = BlobStore(tmp_path)  # start-up after a crash
    assert not leftover.exists()
    assert reopened.total_size == 0


def test_upload_session_resumes_across_restarts(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    digest = Digest.of_bytes(data)
    name = f"main/uploads/u1/blobs/{digest}"
    with UploadSessions(BlobStore(tmp_path)).open(name, digest, Compressor.IDENTITY) as session:
        session.write(0, data[:1000])
    sessions = UploadSessions(BlobStore(tmp_path))  # a new process: only the disk remembers
    assert sessions.status(name, digest) == (1000, False)
    with sessions.open(name, digest, Compressor.IDENTITY) as session:
        with pytest.raises(OffsetMismatch):
            session.write(2000, data[2000:])
        session.write(1000, data[1000:])
        session.finish()
    assert sessions.status(name, digest) == (len(data), True)
    with sessions.store.open(digest) as file:
        assert file.read() == data


def test_large_messages_are_verified_across_streams(tmp_path: Path) -> None:
    """Messages of 1 MiB are hashed in a thread of the session: a stream that stops early
    leaves the hash to the next one, and a flipped byte is still caught at the end."""
    data = os.urandom(6 << 20)
    digest = Digest.of_bytes(data)
    sessions = UploadSessions(BlobStore(tmp_path))
    for upload_id, corrupt in (("bad", True), ("good", False)):
        name = f"main/uploads/{upload_id}/blobs/{digest}"
        sent = bytearray(data)
        if corrupt:
            sent[5 << 20] ^= 1
        with sessions.open(name, digest, Compressor.IDENTITY) as session:
            for offset in range(0, 3 << 20, 1 << 20):  # the first stream stops halfway
                session.write(offset, bytes(sent[offset : offset + (1 << 20)]))
        with sessions.open(name, digest, Compressor.IDENTITY) as session:
            for offset in range(3 << 20, len(sent), 1 << 20):
                session.write(offset, bytes(sent[offset : offset + (1 << 20)]))
            if corrupt:
                with pytest.raises(HashMismatch):
                    session.finish()
                assert not sessions.store.contains(digest)
            else:
                session.finish()
    with sessions.store.open(digest) as file:
        assert file.read() == data


def test_concurrent_uploads_of_one_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    sessions = UploadSessions(store)
    data = os.urandom(4 << 20)
    digest = Digest.of_bytes(data)
    failures: list[BaseException] = []

    def upload(upload_id: str) -> None:
        try:
            name = f"main/uploads/{upload_id}/blobs/{digest}"
            with sessions.open(name, digest, Compressor.IDENTITY) as session:
                for offset in range(0, len(data), 1 << 16):
                    session.write(offset, data[offset : offset + (1 << 16)])
                session.finish()
            store.put(digest, data)  # and a batch upload of the same blob on top
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=upload, args=(f"u{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert store.total_size == len(data)
    with store.open(digest) as file:
        assert file.read() == data
    assert not list((tmp_path / "uploads").glob("*.part"))


def test_lru_eviction_survives_restart(tmp_path: Path) -> None:
    blobs = [os.urandom(1000) for _ in range(4)]
    digests = [Digest.of_bytes(b) for b in blobs]
    store = BlobStore(tmp_path, max_size=3000, evict=True)
    for digest, data in zip(digests[:3], blobs[:3], strict=True):
        store.put(digest, data)
    store.open(digests[0]).close()  # digests[1] is now the least recently used
    store.put(digests[3], blobs[3])
    assert [store.contains(d) for d in digests] == [True, False, True, True]
    assert BlobStore(tmp_path, max_size=3000, evict=True).total_size == 3000
