"""The client's seams, without a subprocess: a ``CasClient`` given its channel by a
factory (here to a server running in this process), and the retry budget a resuming
stream paces itself with (on trio's MockClock: no real sleeps)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trio
import trio.testing

from casfs.cas import errors
from casfs.cas.client import CasClient
from casfs.cas.retry import RetryBudget
from casfs.config import RemoteConfig, RetryPolicy, StoreConfig
from casfs.digest import Digest
from casfs.server.app import build_server
from casfs.server.instances import Instances
from tests.conftest import remote


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[str]:
    """The embedded server's servicers on a unix socket, run by this process's threads."""
    socket = f"unix:{tmp_path / 'cas.sock'}"
    server, _ = build_server(Instances({"main": StoreConfig(tmp_path / "store")}), socket)
    try:
        yield socket
    finally:
        server.stop(grace=None).wait()


def test_the_client_talks_over_the_channel_it_is_given(in_process: str) -> None:
    opened: list[RemoteConfig] = []

    def factory(config: RemoteConfig) -> grpc.Channel:
        opened.append(config)
        return grpc.insecure_channel(in_process)

    # The config names an endpoint nothing listens on: only the factory's channel works.
    config = remote("grpc://127.0.0.1:9")

    async def main() -> None:
        async with CasClient(config, channel=factory) as client:
            digest = await client.upload_bytes(b"through the seam")
            assert await client.contains(digest)
            assert await client.read_blob(digest) == b"through the seam"
        with pytest.raises(ValueError, match="closed"):  # grpc's word: closed with the client
            await client.find_missing([Digest.of_bytes(b"after close")])

    trio.run(main)
    assert opened == [config]


def test_store_file_batches_a_small_file_and_streams_a_large_one(
    in_process: str, tmp_path: Path
) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"s" * 1000)
    large.write_bytes(b"l" * (5 << 20))  # over any batch budget (4 MiB)

    async def main() -> None:
        async with CasClient(
            remote("grpc://127.0.0.1:9"), channel=lambda _: grpc.insecure_channel(in_process)
        ) as client:
            for path in (small, large):
                digest = Digest.of_bytes(path.read_bytes())
                assert await client.fits_batch(digest) is (path is small)
                await client.store_file(digest, path)
                assert await client.contains(digest)
            changed = Digest.of_bytes(b"t" * 1000)
            with pytest.raises(errors.ContentChanged):
                await client.store_file(changed, small)
            assert not await client.contains(changed)

    trio.run(main)


def test_the_retry_budget_resets_on_progress_and_gives_up_without_it() -> None:
    policy = RetryPolicy(attempts=3, initial_backoff=1.0, max_backoff=1.0)
    transient = errors.Unavailable("down")

    async def main() -> None:
        budget = RetryBudget(policy, "test")
        for _ in range(5):  # progress between failures: never runs out
            await budget.back_off(transient)
            budget.reset()
        await budget.back_off(transient)
        await budget.back_off(transient)
        with pytest.raises(errors.Unavailable):  # the third failure in a row: the last
            await budget.back_off(transient)
        with pytest.raises(errors.NotFound):  # final at once, however much budget is left
            await RetryBudget(policy, "test").back_off(errors.NotFound("gone"))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
