"""Pure tests of the tree model: Directory checks and verification, Tree messages, the
one directory encoding, GetTree responses cut into Directories, and what actions/ shows."""

from __future__ import annotations

import json

import pytest
from google.protobuf.duration_pb2 import Duration

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.cas.errors import DataLoss
from casfs.cas.treecalls import split_get_tree_response
from casfs.digest import Digest, DigestFunction
from casfs.trees import actions, encode
from casfs.trees.model import (
    BadDirectory,
    TooDeep,
    TreeLimits,
    check_reachable,
    from_message,
    parse_directory,
    parse_tree,
)

FILE = Digest.of_bytes(b"hello\n")


def blob(message: re_pb2.Directory) -> tuple[bytes, Digest]:
    data = message.SerializeToString()
    return data, Digest.of_bytes(data)


def directory(
    *files: str, dirs: tuple[str, ...] = (), links: tuple[str, ...] = ()
) -> re_pb2.Directory:
    message = re_pb2.Directory()
    for name in files:
        message.files.add(name=name, digest=FILE.to_proto())
    for name in dirs:
        message.directories.add(name=name, digest=Digest.of_bytes(b"").to_proto())
    for name in links:
        message.symlinks.add(name=name, target="x")
    return message


def test_a_good_directory_parses() -> None:
    data, digest = blob(directory("a", "b", dirs=("c",), links=("d",)))
    parsed = parse_directory(data, digest)
    assert [f.name for f in parsed.files] == ["a", "b"]
    assert set(parsed.entries) == {"a", "b", "c", "d"}
    assert parsed.files[0].digest == FILE


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "a\0b", "../../etc"])
def test_bad_names_are_refused(name: str) -> None:
    data, digest = blob(directory(name))
    with pytest.raises(BadDirectory) as caught:
        parse_directory(data, digest)
    assert caught.value.errno == 5  # EIO


def test_duplicates_and_disorder_are_refused() -> None:
    for message in (directory("a", "a"), directory("b", "a"), directory("a", dirs=("a",))):
        data, digest = blob(message)
        with pytest.raises(BadDirectory):
            parse_directory(data, digest)


def test_bytes_that_do_not_match_their_digest_are_data_loss() -> None:
    data, digest = blob(directory("a"))
    with pytest.raises(DataLoss):
        parse_directory(data + b"\x08\x01", digest)
    with pytest.raises(DataLoss):
        parse_directory(data, Digest.of_bytes(b"something else"))


def test_garbage_and_oversized_directories_are_refused() -> None:
    garbage = b"\xff\xff\xff"
    with pytest.raises(BadDirectory):
        parse_directory(garbage, Digest.of_bytes(garbage))
    data, digest = blob(directory("a", "b", "c"))
    with pytest.raises(BadDirectory, match="3 entries"):
        parse_directory(data, digest, TreeLimits(max_entries=2))
    with pytest.raises(BadDirectory, match="larger than"):
        parse_directory(data, digest, TreeLimits(max_directory_bytes=4))


def test_bad_digests_inside_are_refused() -> None:
    message = re_pb2.Directory()
    message.files.add(name="a", digest=re_pb2.Digest(hash="nothex", size_bytes=1))
    data, digest = blob(message)
    with pytest.raises(BadDirectory):
        parse_directory(data, digest)


def test_node_properties_give_mtimes() -> None:
    message = directory("a")
    message.files[0].node_properties.mtime.FromNanoseconds(1_700_000_000_123_456_789)
    data, digest = blob(message)
    assert parse_directory(data, digest).files[0].mtime_ns == 1_700_000_000_123_456_789


def _chain(depth: int) -> tuple[re_pb2.Directory, list[re_pb2.Directory]]:
    """A root with ``depth`` directories below it, one inside the other."""
    below: list[re_pb2.Directory] = []
    child = re_pb2.Directory()
    for _ in range(depth):
        below.append(child)
        parent = re_pb2.Directory()
        parent.directories.add(name="d", digest=blob(child)[1].to_proto())
        child = parent
    return child, below


def test_trees_are_verified_and_bounded_in_depth() -> None:
    root, children = _chain(5)
    tree = re_pb2.Tree(root=root, children=children)
    data = tree.SerializeToString()
    parsed_root, parsed = parse_tree(data, Digest.of_bytes(data))
    assert len(parsed) == 5 and parsed_root.directories[0].name == "d"
    with pytest.raises(TooDeep):
        parse_tree(data, Digest.of_bytes(data), TreeLimits(max_depth=4))
    with pytest.raises(DataLoss):
        parse_tree(data, Digest.of_bytes(data + b"x"))
    missing = re_pb2.Tree(root=root, children=children[1:]).SerializeToString()
    with pytest.raises(BadDirectory, match="missing"):
        parse_tree(missing, Digest.of_bytes(missing))


def test_check_reachable_counts_levels() -> None:
    root, children = _chain(3)
    known = {blob(c)[1]: from_message(c, blob(c)[1]) for c in children}
    parsed_root = from_message(root, blob(root)[1])
    check_reachable(parsed_root, known, TreeLimits(max_depth=3), "t")
    with pytest.raises(TooDeep):
        check_reachable(parsed_root, known, TreeLimits(max_depth=2), "t")


def test_encoding_sorts_and_matches_a_hand_built_directory() -> None:
    sub = Digest.of_bytes(b"")
    data = encode.directory_bytes(
        [
            ("z", encode.FileEntry(FILE, True)),
            ("link", encode.SymlinkEntry("../x")),
            ("a", encode.FileEntry(FILE, False)),
            ("dir", encode.DirectoryEntry(sub)),
        ]
    )
    expected = re_pb2.Directory()
    expected.files.add(name="a", digest=FILE.to_proto())
    expected.files.add(name="z", digest=FILE.to_proto(), is_executable=True)
    expected.directories.add(name="dir", digest=sub.to_proto())
    expected.symlinks.add(name="link", target="../x")
    assert data == expected.SerializeToString()


def test_get_tree_responses_are_cut_into_exact_bytes() -> None:
    one, two = directory("a"), directory("b", dirs=("c",))
    response = re_pb2.GetTreeResponse(directories=[one, two], next_page_token="42")
    parts, token = split_get_tree_response(response.SerializeToString())
    assert parts == [one.SerializeToString(), two.SerializeToString()]
    assert token == b"42"
    with pytest.raises(DataLoss):
        split_get_tree_response(b"\x0a\x05ab")  # a length past the end


# -- actions/ ---------------------------------------------------------------------------------

SHA = DigestFunction.SHA256


def test_exit_code_and_streams() -> None:
    out = Digest.of_bytes(b"err\n")
    result = re_pb2.ActionResult(exit_code=3, stdout_raw=b"out\n", stderr_digest=out.to_proto())
    assert actions.exit_code_text(result) == b"3\n"
    assert actions.stdout(result, SHA) == actions.Inline(b"out\n")
    assert actions.stderr(result, SHA) == actions.InCas(out)
    assert actions.stdout(re_pb2.ActionResult(), SHA) == actions.Inline(b"")


def test_outputs_by_path() -> None:
    root, children = _chain(1)
    tree = re_pb2.Tree(root=root, children=children)
    tree_data = tree.SerializeToString()
    tree_digest = Digest.of_bytes(tree_data)
    result = re_pb2.ActionResult()
    result.output_files.add(path="bin/tool", digest=FILE.to_proto(), is_executable=True)
    result.output_files.add(path="inline.txt", contents=b"abc")
    result.output_directories.add(path="gen/out", tree_digest=tree_digest.to_proto())
    result.output_symlinks.add(path="bin/alias", target="tool")
    nodes = actions.outputs(result, SHA, {tree_digest: parse_tree(tree_data, tree_digest)})
    assert nodes["bin/tool"] == actions.OutputFile(actions.InCas(FILE), True)
    assert nodes["inline.txt"] == actions.OutputFile(actions.Inline(b"abc"), False)
    assert nodes["bin/alias"] == actions.OutputSymlink("tool")
    tree_node = nodes["gen/out"]
    assert isinstance(tree_node, actions.OutputTree) and tree_node.root == blob(root)[1]
    assert nodes[""] == actions.OutputParent(frozenset({"bin", "inline.txt", "gen"}))
    assert nodes["bin"] == actions.OutputParent(frozenset({"tool", "alias"}))
    assert nodes["gen"] == actions.OutputParent(frozenset({"out"}))


@pytest.mark.parametrize(
    "paths", [["../x"], ["/etc/passwd"], ["a//b"], ["a/./b"], ["a", "a"], ["a", "a/b"], [""]]
)
def test_hostile_output_paths_are_refused(paths: list[str]) -> None:
    result = re_pb2.ActionResult()
    for path in paths:
        result.output_files.add(path=path, digest=FILE.to_proto())
    with pytest.raises(BadDirectory):
        actions.outputs(result, SHA)


def test_result_json_is_protobufs_mapping() -> None:
    result = re_pb2.ActionResult(exit_code=1, stdout_raw=b"x")
    result.output_files.add(path="a", digest=FILE.to_proto())
    parsed = json.loads(actions.result_json(result))
    assert parsed["exit_code"] == 1
    assert parsed["stdout_raw"] == "eA=="
    assert parsed["output_files"][0]["digest"]["size_bytes"] == str(FILE.size)


def test_command_and_action() -> None:
    command = re_pb2.Command(arguments=["cc", "-o", "out file", "it's.c"], working_directory="src")
    command.environment_variables.add(name="PATH", value="/bin:/usr/bin")
    command.output_paths.append("out file")
    action = re_pb2.Action(
        command_digest=FILE.to_proto(),
        input_root_digest=Digest.of_bytes(b"").to_proto(),
        timeout=Duration(seconds=60),
    )
    action.platform.properties.add(name="OSFamily", value="linux")
    text = actions.command_text(command, action).decode()
    assert text.splitlines()[:2] == ["cd src", "PATH=/bin:/usr/bin cc -o 'out file' 'it'\\''s.c'"]
    assert "OSFamily=linux" in text and text.endswith("# outputs\nout file\n")
    assert actions.input_root(action, SHA) == Digest.of_bytes(b"")
    assert actions.command_digest(action, SHA) == FILE
    assert json.loads(actions.action_json(action))["timeout"] == "60s"
