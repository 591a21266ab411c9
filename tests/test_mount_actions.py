"""``<instance>/actions/`` through a real mount: an ActionResult written with
UpdateActionResult (output files inline and by digest, a Tree output directory, an output
symlink, stdout as raw bytes, stderr by digest) read back with the right bytes, modes and
targets; the Action and Command under ``action/``; and the bad cases (no entry: ENOENT;
an output path that escapes, a Tree that does not match its digest: EIO)."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.client import CasClient
from casfs.cas.treecalls import TreeCalls
from casfs.digest import Digest
from tests.conftest import remote
from tests.mounts import CasfsMount
from tests.servers import CasfsServer
from tests.test_mount_trees import directory, errno_of, xattr
from tests.test_trees_server import store_raw

STDOUT = b"compiling\n\x00\xff raw bytes\n"
STDERR = b"warning: stderr by digest\n" * 100
HELLO = os.urandom(100_000)


@dataclass
class Fixture:
    server: CasfsServer
    mount: CasfsMount

    @property
    def actions(self) -> Path:
        return self.mount.mountpoint / "main" / "actions"

    def action(self, digest: Digest) -> Path:
        return self.actions / digest.hash / str(digest.size)

    def upload(self, *blobs: bytes) -> list[Digest]:
        async def main() -> list[Digest]:
            async with CasClient(remote(self.server.endpoint)) as client:
                return [await client.upload_bytes(blob) for blob in blobs]

        return trio.run(main)

    def record(self, action: Digest, result: re_pb2.ActionResult) -> None:
        async def main() -> None:
            async with CasClient(remote(self.server.endpoint)) as client:
                await TreeCalls(client).update_action_result(action, result)

        trio.run(main)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    root = tmp_path_factory.mktemp("actions")
    with (
        CasfsServer(root / "store") as server,
        CasfsMount(root / "mnt", "--remote", server.endpoint, "--no-disk-cache") as mount,
    ):
        yield Fixture(server, mount)


def an_action(fx: Fixture) -> tuple[Digest, re_pb2.ActionResult, re_pb2.Tree]:
    """An Action and Command in the CAS, and a result with every kind of output."""
    hello_c, hello, small, stderr, a_txt, b_txt = fx.upload(
        b"int main(void) { return 3; }\n", HELLO, b"small\n", STDERR, b"a\n", b"b\n"
    )
    (input_root,) = fx.upload(directory({"hello.c": hello_c}).SerializeToString())
    command = re_pb2.Command(
        arguments=["gcc", "-o", "out/hello", "hello c"],
        environment_variables=[re_pb2.Command.EnvironmentVariable(name="PATH", value="/bin")],
        output_paths=["out", "log.txt"],
    )
    (command_digest,) = fx.upload(command.SerializeToString())
    action = re_pb2.Action(
        command_digest=command_digest.to_proto(),
        input_root_digest=input_root.to_proto(),
        platform=re_pb2.Platform(
            properties=[re_pb2.Platform.Property(name="OSFamily", value="linux")]
        ),
    )
    (action_digest,) = fx.upload(action.SerializeToString())
    sub = directory({"b.txt": b_txt}, links={"up": "../a.txt"})
    sub_digest = Digest.of_bytes(sub.SerializeToString(deterministic=True))
    tree = re_pb2.Tree(root=directory({"a.txt": a_txt}, {"sub": sub_digest}), children=[sub])
    (tree_digest,) = fx.upload(tree.SerializeToString())
    result = re_pb2.ActionResult(exit_code=3, stdout_raw=STDOUT, stderr_digest=stderr.to_proto())
    result.output_files.add(path="out/hello", digest=hello.to_proto(), is_executable=True)
    result.output_files.add(path="out/small.txt", digest=small.to_proto(), contents=b"small\n")
    result.output_files.add(path="log.txt", digest=small.to_proto())
    result.output_directories.add(path="out/dir", tree_digest=tree_digest.to_proto())
    result.output_symlinks.add(path="out/link", target="hello")
    fx.record(action_digest, result)
    return action_digest, result, tree


def test_an_action_result_shows_its_outputs(fx: Fixture) -> None:
    digest, _, _ = an_action(fx)
    entry = fx.action(digest)
    assert sorted(os.listdir(entry)) == [
        "action", "exit_code", "outputs", "result.json", "stderr", "stdout",
    ]  # fmt: skip
    assert (entry / "exit_code").read_bytes() == b"3\n"
    assert (entry / "stdout").read_bytes() == STDOUT
    assert (entry / "stderr").read_bytes() == STDERR
    assert xattr(entry / "stderr") == str(Digest.of_bytes(STDERR))
    assert xattr(entry) == str(digest)
    outputs = entry / "outputs"
    assert sorted(os.listdir(outputs)) == ["log.txt", "out"]
    assert sorted(os.listdir(outputs / "out")) == ["dir", "hello", "link", "small.txt"]
    assert (outputs / "out" / "hello").read_bytes() == HELLO
    assert stat.S_IMODE((outputs / "out" / "hello").stat().st_mode) == 0o555
    assert stat.S_IMODE((outputs / "log.txt").stat().st_mode) == 0o444
    assert (outputs / "out" / "small.txt").read_bytes() == b"small\n"
    assert (outputs / "log.txt").read_bytes() == b"small\n"
    assert os.readlink(outputs / "out" / "link") == "hello"
    tree = outputs / "out" / "dir"
    assert sorted(os.listdir(tree)) == ["a.txt", "sub"]
    assert (tree / "a.txt").read_bytes() == b"a\n"
    assert (tree / "sub" / "b.txt").read_bytes() == b"b\n"
    assert (tree / "sub" / "up").read_bytes() == b"a\n"  # a relative link, inside the tree
    result = json.loads((entry / "result.json").read_bytes())
    assert result["exit_code"] == 3 and result["output_symlinks"][0]["target"] == "hello"
    command = (entry / "action" / "command").read_text()
    assert "PATH=/bin gcc -o out/hello 'hello c'" in command and "OSFamily=linux" in command
    assert json.loads((entry / "action" / "action.json").read_bytes())["platform"]
    assert os.listdir(entry / "action" / "input_root") == ["hello.c"]
    assert digest.hash in os.listdir(fx.actions)  # ls actions/ shows what was seen


def test_an_action_with_no_entry_is_enoent(fx: Fixture) -> None:
    never = Digest.of_bytes(b"an action nobody ran")
    assert errno_of(os.listdir, fx.action(never)) == errno.ENOENT


def test_an_entry_without_its_action_in_the_cas_has_no_action_dir(fx: Fixture) -> None:
    digest = Digest.of_bytes(b"an action that is not in the CAS")
    fx.record(digest, re_pb2.ActionResult(exit_code=0, stdout_raw=b"hi\n"))
    assert sorted(os.listdir(fx.action(digest))) == [
        "exit_code", "outputs", "result.json", "stderr", "stdout",
    ]  # fmt: skip
    assert (fx.action(digest) / "stderr").read_bytes() == b""
    assert os.listdir(fx.action(digest) / "outputs") == []


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a//b", "out/./x"])
def test_an_output_path_that_escapes_is_eio(fx: Fixture, path: str) -> None:
    digest = Digest.of_bytes(f"an action with output {path}".encode())
    result = re_pb2.ActionResult()
    result.output_files.add(path=path, contents=b"owned\n")
    fx.record(digest, result)
    assert errno_of(os.listdir, fx.action(digest)) == errno.EIO
    assert "Traceback" not in fx.mount.log_text()


def test_a_tree_that_does_not_match_its_digest_is_eio(fx: Fixture) -> None:
    (good,) = fx.upload(b"good\n")
    honest = re_pb2.Tree(root=directory({"a": good})).SerializeToString()
    liar = re_pb2.Tree(root=directory({"b": good})).SerializeToString()
    tree_digest = Digest.of_bytes(honest)
    store_raw(fx.server, tree_digest, liar)
    digest = Digest.of_bytes(b"an action with a lying tree")
    result = re_pb2.ActionResult()
    result.output_directories.add(path="dir", tree_digest=tree_digest.to_proto())
    fx.record(digest, result)
    for _ in range(2):
        assert errno_of(os.listdir, fx.action(digest)) == errno.EIO
    assert fx.mount.log_text().count(str(tree_digest)) == 1  # logged once
