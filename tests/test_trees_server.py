"""TreeSource, the small-file prefetcher and ActionCache entries against a real
``casfs serve``: fetching, caching, both prefetch methods, and Directories that lie."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.client import CasClient
from casfs.cas.errors import DataLoss, NotFound
from casfs.digest import Digest
from casfs.trees import actions
from casfs.trees.actionsource import fetch_action
from casfs.trees.model import BadDirectory, TooDeep, TreeLimits
from casfs.trees.smallfiles import small_files
from casfs.trees.source import Prefetch, TreeSource
from tests.conftest import remote
from tests.servers import CasfsServer

T = TypeVar("T")


def run_source(
    server: CasfsServer, fn: Callable[[TreeSource], Awaitable[T]], **kwargs: object
) -> T:
    async def main() -> T:
        async with CasClient(remote(server.endpoint)) as client:
            return await fn(TreeSource(client, **kwargs))  # type: ignore[arg-type]

    return trio.run(main)


def store_raw(server: CasfsServer, digest: Digest, data: bytes) -> None:
    """Put bytes into the server's store under a digest, unchecked (as a lying or broken
    server would hold them)."""
    path = server.store / "cas" / "sha256" / digest.hash[:2] / digest.hash
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def upload_tree(client: CasClient, width: int, depth: int) -> tuple[Digest, int]:
    """A tree ``width`` directories wide at each level, ``depth`` levels deep, each
    directory with two small files; returns its root and how many directories it has."""
    count = 0

    async def level(left: int, tag: str) -> Digest:
        nonlocal count
        message = re_pb2.Directory()
        for name in ("a.txt", "b.txt"):
            data = f"{tag}/{name}\n".encode()
            digest = await client.upload_bytes(data)
            message.files.add(name=name, digest=digest.to_proto())
        if left:
            for i in range(width):
                child = await level(left - 1, f"{tag}/{i}")
                message.directories.add(name=f"d{i:03}", digest=child.to_proto())
        count += 1
        return await client.upload_bytes(message.SerializeToString())

    root = await level(depth, "")
    return root, count


@pytest.mark.parametrize("method", list(Prefetch))
def test_prefetch_fetches_the_whole_tree(server: CasfsServer, method: Prefetch) -> None:
    async def scenario(source: TreeSource) -> tuple[int, int]:
        root, count = await upload_tree(source.client, 3, 3)
        fetched = await source.prefetch(root, method)
        assert len(source) == count
        top = await source.directory(root)  # from the cache now
        assert [d.name for d in top.directories] == ["d000", "d001", "d002"]
        return fetched, count

    fetched, count = run_source(server, scenario)
    assert fetched == count == 1 + 3 + 9 + 27


def test_cache_is_bounded(server: CasfsServer) -> None:
    async def scenario(source: TreeSource) -> None:
        root, _ = await upload_tree(source.client, 4, 2)
        await source.prefetch(root)
        assert source.held_bytes <= 4000
        assert (await source.directory(root)).digest == root

    run_source(server, scenario, cache_bytes=4000)


def test_missing_directory_is_not_found(server: CasfsServer) -> None:
    async def scenario(source: TreeSource) -> None:
        with pytest.raises(NotFound):
            await source.directory(Digest.of_bytes(b"never stored"))

    run_source(server, scenario)


@pytest.mark.parametrize("method", list(Prefetch))
def test_a_directory_that_does_not_match_its_digest_is_data_loss(
    server: CasfsServer, method: Prefetch
) -> None:
    honest = re_pb2.Directory()
    honest.files.add(name="a", digest=Digest.of_bytes(b"a").to_proto())
    digest = Digest.of_bytes(honest.SerializeToString())
    liar = re_pb2.Directory()
    liar.files.add(name="b", digest=Digest.of_bytes(b"b").to_proto())  # same length
    assert len(liar.SerializeToString()) == digest.size
    store_raw(server, digest, liar.SerializeToString())
    parent = re_pb2.Directory()
    parent.directories.add(name="sub", digest=digest.to_proto())

    async def scenario(source: TreeSource) -> None:
        with pytest.raises(DataLoss):
            await source.directory(digest)
        top = await source.client.upload_bytes(parent.SerializeToString())
        with pytest.raises(DataLoss):
            await source.prefetch(top, method)  # GetTree's copy is refused, then the batch's
        assert source.cached(digest) is None

    run_source(server, scenario)


def hostile(kind: str) -> re_pb2.Directory:
    message = re_pb2.Directory()
    file = Digest.of_bytes(b"x").to_proto()
    if kind == "dotdot":
        message.directories.add(name="..", digest=Digest.of_bytes(b"").to_proto())
    elif kind == "slash":
        message.files.add(name="a/b", digest=file)
    elif kind == "nul":
        message.symlinks.add(name="a\0", target="t")
    elif kind == "duplicate":
        message.files.add(name="a", digest=file)
        message.symlinks.add(name="a", target="t")
    elif kind == "many":
        for i in range(11):
            message.files.add(name=f"f{i:02}", digest=file)
    return message


@pytest.mark.parametrize("kind", ["dotdot", "slash", "nul", "duplicate", "many"])
def test_hostile_directories_are_refused(server: CasfsServer, kind: str) -> None:
    async def scenario(source: TreeSource) -> None:
        digest = await source.client.upload_bytes(hostile(kind).SerializeToString())
        with pytest.raises(BadDirectory) as caught:
            await source.directory(digest)
        assert caught.value.errno == 5
        assert source.cached(digest) is None

    run_source(server, scenario, limits=TreeLimits(max_entries=10))


@pytest.mark.parametrize("method", list(Prefetch))
def test_too_deep_a_tree_is_refused(server: CasfsServer, method: Prefetch) -> None:
    async def scenario(source: TreeSource) -> None:
        root, _ = await upload_tree(source.client, 1, 6)
        with pytest.raises(TooDeep):
            await source.prefetch(root, method)
        root, _ = await upload_tree(source.client, 1, 5)
        await source.prefetch(root, method)

    run_source(server, scenario, limits=TreeLimits(max_depth=5))


def test_small_files_come_in_few_batches(server: CasfsServer) -> None:
    contents = [os.urandom(n) for n in (1, 100, 4000, 60_000, 65_536)] + [b"x" * 70_000]

    async def scenario(source: TreeSource) -> dict[Digest, bytes]:
        message = re_pb2.Directory()
        for i, data in enumerate(contents):
            digest = await source.client.upload_bytes(data)
            message.files.add(name=f"f{i}", digest=digest.to_proto())
        message.files.add(name="zdup", digest=Digest.of_bytes(contents[0]).to_proto())
        message.files.add(name="zempty", digest=Digest.of_bytes(b"").to_proto())
        root = await source.client.upload_bytes(message.SerializeToString())
        got: dict[Digest, bytes] = {}

        async def store(digest: Digest, data: bytes) -> None:
            assert digest not in got
            got[digest] = data

        skip = [Digest.of_bytes(contents[1])]
        await small_files(source.client, await source.directory(root), store, skip=skip)
        return got

    got = run_source(server, scenario)
    wanted = [c for c in contents if 0 < len(c) <= 65_536 and c != contents[1]]
    assert got == {Digest.of_bytes(c): c for c in wanted}


def test_action_results_show_what_actions_will(server: CasfsServer) -> None:
    async def scenario(source: TreeSource) -> None:
        client = source.client
        tool = await client.upload_bytes(b"#!/bin/sh\necho hi\n")
        err = await client.upload_bytes(b"warning: careful\n")
        leaf = re_pb2.Directory()
        leaf.files.add(name="gen.h", digest=tool.to_proto())
        root = re_pb2.Directory()
        root.directories.add(
            name="include", digest=Digest.of_bytes(leaf.SerializeToString()).to_proto()
        )
        tree = await client.upload_bytes(
            re_pb2.Tree(root=root, children=[leaf]).SerializeToString()
        )
        command = re_pb2.Command(arguments=["sh", "-c", "build"])
        command_digest = await client.upload_bytes(command.SerializeToString())
        action = re_pb2.Action(command_digest=command_digest.to_proto())
        action_digest = await client.upload_bytes(action.SerializeToString())
        result = re_pb2.ActionResult(exit_code=0, stdout_raw=b"done\n")
        result.stderr_digest.CopyFrom(err.to_proto())
        result.output_files.add(path="bin/tool", digest=tool.to_proto(), is_executable=True)
        result.output_directories.add(path="out", tree_digest=tree.to_proto())
        result.output_symlinks.add(path="bin/t", target="tool")
        await source.calls.update_action_result(action_digest, result)

        view = await fetch_action(source, action_digest)
        assert actions.exit_code_text(view.result) == b"0\n"
        assert actions.stdout(view.result, action_digest.function) == actions.Inline(b"done\n")
        assert actions.stderr(view.result, action_digest.function) == actions.InCas(err)
        nodes = view.outputs()
        assert nodes["bin/tool"] == actions.OutputFile(actions.InCas(tool), True)
        out = nodes["out"]
        assert isinstance(out, actions.OutputTree)
        top = await source.directory(out.root)  # the Tree's Directories are in the cache
        assert top.directories[0].name == "include"
        assert view.command is not None and view.command.arguments[0] == "sh"

        # an entry whose Action is not in the CAS shows no action/
        other = Digest.of_bytes(b"an action nobody stored")
        await source.calls.update_action_result(other, re_pb2.ActionResult(exit_code=2))
        bare = await fetch_action(source, other)
        assert bare.action is None and bare.command is None

        with pytest.raises(NotFound):
            await fetch_action(source, Digest.of_bytes(b"no entry"))

    run_source(server, scenario)


def test_an_output_tree_that_does_not_match_is_data_loss(server: CasfsServer) -> None:
    real = re_pb2.Tree(root=hostile("none")).SerializeToString()
    digest = Digest.of_bytes(real)
    store_raw(server, digest, b"\0" * digest.size)

    async def scenario(source: TreeSource) -> None:
        result = re_pb2.ActionResult()
        result.output_directories.add(path="out", tree_digest=digest.to_proto())
        action = Digest.of_bytes(b"action with a bad tree")
        await source.calls.update_action_result(action, result)
        with pytest.raises(DataLoss):
            await fetch_action(source, action)

    run_source(server, scenario)
