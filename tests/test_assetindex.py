"""``fs/assetindex.py``: the store's asset index read in a worker thread, off the mount's
trio thread, against a real index written by the store (no mount: the listings of
``assets/`` through a real mount are in ``test_mount_assets.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from casfs.digest import Digest
from casfs.fs.assetindex import MAX_LISTING, CatalogIndex
from casfs.store.assets import AssetIndex, AssetKind

NAMES = [f"https://h.example/{i:05}" for i in range(MAX_LISTING)]
DIGEST = Digest("b" * 64, 7)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("index")
    index = AssetIndex(root, fsync=False)
    try:
        index.push(AssetKind.BLOB, NAMES, {"content_type": "x"}, DIGEST)
        index.push(AssetKind.BLOB, ["urn:one", "ftp://f/a/b"], {}, DIGEST)
    finally:
        index.close()
    return root


async def _ticking(listing: trio.CancelScope | None, ticks: list[int]) -> None:
    """Count the trio loop's turns (and cancel ``listing`` at the first)."""
    while True:
        await trio.sleep(0)
        ticks.append(1)
        if listing is not None:
            listing.cancel()


def test_a_listing_leaves_the_trio_thread_free(store: Path) -> None:
    async def main() -> None:
        index = CatalogIndex(store)
        ticks: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_ticking, None, ticks)
            records = await index.children("https://h.example/")
            nursery.cancel_scope.cancel()
        assert [r.uri for r in records] == NAMES
        assert records[0].qualifiers == {"content_type": "x"} and records[0].digest == DIGEST
        assert ticks, "the trio thread waited for SQLite"
        assert await index.has_below("ftp://f/") and not await index.has_below("ftp://g/")
        assert sorted(await index.scheme_uris()) == ["ftp://f/a/b", NAMES[0], "urn:one"]
        index.close()

    trio.run(main)


def test_a_cancelled_listing_leaves_the_index_usable(store: Path) -> None:
    async def main() -> None:
        index = CatalogIndex(store)
        for _ in range(3):
            with trio.CancelScope() as listing:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_ticking, listing, [])
                    await index.children("https://h.example/")
                    raise AssertionError("not cancelled")
            assert listing.cancelled_caught
            # The call in its thread ended before the cancelled caller went on.
            assert index._db is None or not index._db.in_transaction
            assert len(await index.children("https://h.example/")) == MAX_LISTING
        index.close()

    trio.run(main)


def test_no_index_or_a_bad_one_lists_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        index = CatalogIndex(tmp_path)  # no index file yet
        assert await index.children("https://h/") == []
        (tmp_path / index.path.name).write_bytes(b"not a database" * 100)
        assert await index.children("https://h/") == []  # logged, no rows
        assert await index.scheme_uris() == []
        index.close()

    trio.run(main)
