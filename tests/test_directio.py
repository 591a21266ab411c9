"""DirectWriter: the bytes land where they were written, and whole blocks skip the page
cache (checked with util-linux's ``fincore``, which counts a file's cached pages)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casfs import directio
from casfs.directio import ALIGNMENT, DirectReader, DirectWriter

MIB = 1 << 20


def _cached_pages(path: Path) -> int:
    done = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "PAGES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[0])


def _writer(path: Path) -> tuple[int, DirectWriter]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    return fd, DirectWriter(path, fd)


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux's fincore")
def test_aligned_writes_leave_nothing_in_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    fd, writer = _writer(path)
    if not writer.direct:
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    data = os.urandom(8 * MIB + 100)  # whole blocks, then a tail of 100 bytes
    try:
        for offset in range(0, len(data), MIB):
            writer.pwrite(data[offset : offset + MIB], offset)
        assert _cached_pages(path) <= 1  # at most the page holding the tail
    finally:
        writer.close()
        os.close(fd)
    assert path.read_bytes() == data


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3 * MIB), st.integers(0, 2 * MIB + 3 * ALIGNMENT)),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 2**32),
)
def test_any_writes_read_back_as_written(
    tmp_path_factory: pytest.TempPathFactory, writes: list[tuple[int, int]], seed: int
) -> None:
    """Heads, aligned bodies, tails, overwrites and holes, against a bytearray model."""
    path = tmp_path_factory.mktemp("dio") / "file"
    rng = random.Random(seed)
    model = bytearray()
    fd, writer = _writer(path)
    try:
        for offset, length in writes:
            data = rng.randbytes(length)
            assert writer.pwrite(data, offset) == length
            if length:
                model.extend(bytes(max(0, offset + length - len(model))))
                model[offset : offset + length] = data
            # a buffered read in between sees every byte (Linux keeps the paths coherent)
            assert os.pread(fd, len(model), 0) == bytes(model)
    finally:
        writer.close()
        os.close(fd)
    assert path.read_bytes() == bytes(model)


def test_a_file_system_without_o_direct_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal is faked (no file system here refuses O_DIRECT): open says EINVAL."""
    real_open = os.open

    def refusing_open(path: str | Path, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(directio.os, "open", refusing_open)
    path = tmp_path / "file"
    fd, writer = _writer(path)
    try:
        assert not writer.direct
        data = os.urandom(3 * MIB)
        writer.pwrite(data, 0)
    finally:
        writer.close()
        os.close(fd)
    assert path.read_bytes() == data


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux's fincore")
def test_a_cold_file_is_read_without_filling_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    data = os.urandom(5 * MIB + 777)
    fd, writer = _writer(path)
    try:
        writer.pwrite(data, 0)
    finally:
        writer.close()
        os.close(fd)
    subprocess.run(["dd", f"of={path}", "oflag=nocache", "conv=notrunc,fdatasync", "count=0"],
                   check=True, capture_output=True)  # drop what the tail left cached
    reader = DirectReader(path)
    try:
        pieces = [reader.pread(MIB, offset) for offset in range(0, len(data), MIB)]
        assert b"".join(pieces) == data
        assert reader.pread(100, 5 * MIB + 700) == data[5 * MIB + 700 :]  # unaligned: buffered
        assert reader.pread(MIB, len(data)) == b""
        assert _cached_pages(path) <= 2  # the tail's page, and the unaligned read's
    finally:
        reader.close()


@pytest.mark.parametrize("direct", [True, False])
def test_chunks_read_ahead_and_stop_where_the_file_does(tmp_path: Path, direct: bool) -> None:
    path = tmp_path / "file"
    data = os.urandom(3 * MIB + 5)
    path.write_bytes(data)
    reader = DirectReader(path, direct=direct)
    try:
        assert b"".join(reader.chunks(0, len(data), MIB)) == data
        assert [len(p) for p in reader.chunks(MIB, len(data), MIB)] == [MIB, MIB, 5]
        assert b"".join(reader.chunks(2 * MIB, 10 * MIB, MIB)) == data[2 * MIB :]  # short
        unfinished = reader.chunks(0, len(data), MIB)
        assert next(unfinished) == data[:MIB]
        unfinished.close()  # its read-ahead ends before the descriptors go
    finally:
        reader.close()
