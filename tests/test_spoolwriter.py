"""The write-behind spool: its memory bound, where a failure cuts a file, and a close that
races a truncate. Real files (a small tmpfs for a full disk); the CAS client in the race
is a stand-in, since no real server makes that interleaving happen on demand."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio

from casfs.digest import Digest, DigestFunction
from casfs.fs.behind import ByteBudget
from casfs.fs.spoolwriter import SpoolWriter
from casfs.fs.uploads import Spool, UploadError, Uploads
from tests.test_faults import tmpfs

MIB = 1 << 20


def test_closing_a_busy_writer_gives_its_bytes_back_once(tmp_path: Path) -> None:
    """An unlink while a batch lands: the budget ends at zero, not below it."""

    async def main() -> None:
        budget = ByteBudget()
        async with trio.open_nursery() as nursery:
            for round_ in range(4):
                path = tmp_path / f"f{round_}"
                path.touch()
                writer = SpoolWriter(path, nursery, budget)
                for index in range(8):
                    writer.submit(index * MIB, bytes(MIB))
                await trio.sleep(0)  # the first batch is in its thread now
                writer.close()
                await writer.settle()
                assert budget.queued == 0

    trio.run(main)


def test_a_full_disk_cuts_below_every_write_that_did_not_land(tmp_path: Path) -> None:
    async def main(spool_dir: Path) -> None:
        path = spool_dir / "spool"
        path.touch()
        async with trio.open_nursery() as nursery:
            writer = SpoolWriter(path, nursery, ByteBudget())
            for offset in range(2 * MIB, 12 * MIB, MIB):  # 10 MiB after a hole: 6 fit
                writer.submit(offset, bytes(MIB))
            writer.submit(0, bytes(MIB))  # into the hole, queued behind the failure
            await writer.settle()
            assert writer.error is not None and writer.error.errno == errno.ENOSPC
            assert writer.failed_at == 0  # the dropped write into the hole is below the cut
            writer.close()

    with tmpfs(tmp_path / "small", "6m") as spool_dir:
        trio.run(main, spool_dir)


class _ServerHasIt:
    """A CAS client whose server has every blob already: a close only asks."""

    upload_function = DigestFunction.SHA256

    class _Capabilities:
        def batch_budget(self) -> int:
            return 4 * MIB

    async def find_missing(self, digests: Iterable[Digest]) -> set[Digest]:
        await trio.sleep(0.01)  # a round trip
        return set()

    async def capabilities(self) -> _ServerHasIt._Capabilities:
        return self._Capabilities()


@pytest.mark.parametrize("trial", range(8))
def test_a_truncate_never_lands_inside_a_commit(tmp_path: Path, trial: int) -> None:
    """A truncate that comes while a close commits the file waits for the commit, or
    comes before it; it never changes the file under the commit."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            uploads = Uploads({"main": _ServerHasIt()}, Spool(tmp_path), nursery)  # type: ignore[dict-item]
            entry = uploads.new_file("main", uploads.roots["main"], "f", 0o644, None)
            await uploads.open(entry, write=True, truncate=False)
            await uploads.write(entry, 0, bytes(8 * MIB))  # queued: the worker lands it
            outcome: dict[str, object] = {}

            async def truncate() -> None:
                try:
                    await uploads.truncate(entry, 0)
                    outcome["truncate"] = "done"
                except UploadError as error:
                    outcome["truncate"] = error.errno

            async def close() -> None:
                await trio.sleep(0)
                outcome["digest"] = await uploads.finalize(entry)

            nursery.start_soon(truncate)
            nursery.start_soon(close)
        uploads.spool.close()
        assert outcome["truncate"] == "done"  # a commit in progress is waited for
        assert entry.size == 0
        if entry.committed:
            assert entry.digest == Digest.of_bytes(b"")  # the truncate came first
        # else it came after the commit, and made the file pending again

    trio.run(main)
