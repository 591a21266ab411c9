"""The disk cache's block files are written around the page cache (``fs/blocks/directwrite.py``):
whole pages by ``O_DIRECT``, the rest buffered, and every byte reads back as written."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

import pytest

from casfs.fs.blocks import directwrite
from casfs.fs.blocks.directwrite import BlockWriter
from tests.test_directio import _cached_pages

MIB = 1 << 20
TRAILER = b"trailer-16-bytes"


def _write(writer: BlockWriter, path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        writer.write(fd, [data, TRAILER])
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5, MIB, MIB + 1])
def test_every_size_reads_back_as_written(tmp_path: Path, size: int) -> None:
    writer = BlockWriter()
    data = os.urandom(size)
    _write(writer, tmp_path / "block", data)
    assert (tmp_path / "block").read_bytes() == data + TRAILER
    # a larger block after a smaller one (the staging buffer grows), then a smaller again
    for other in (2 * MIB + 7, 8192):
        more = os.urandom(other)
        _write(writer, tmp_path / f"block-{other}", more)
        assert (tmp_path / f"block-{other}").read_bytes() == more + TRAILER


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux's fincore")
def test_a_whole_block_leaves_nothing_in_the_page_cache(tmp_path: Path) -> None:
    writer = BlockWriter()
    _write(writer, tmp_path / "block", os.urandom(MIB))
    if not writer.direct:
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    assert _cached_pages(tmp_path / "block") <= 1  # at most the trailer's page


def test_a_file_system_without_o_direct_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal is faked (no file system here refuses O_DIRECT): fcntl says EINVAL."""
    real_fcntl = fcntl.fcntl

    def refusing(fd: int, command: int, arg: int = 0) -> int:
        if command == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, command, arg)

    monkeypatch.setattr(directwrite.fcntl, "fcntl", refusing)
    writer = BlockWriter()
    data = os.urandom(MIB + 3)
    _write(writer, tmp_path / "block", data)
    assert not writer.direct
    assert (tmp_path / "block").read_bytes() == data + TRAILER
