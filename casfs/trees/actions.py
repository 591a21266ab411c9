"""What ``actions/<hash>/<size>/`` shows for an ActionCache entry. Pure: no I/O.

The fetching side (``actionsource.py``) hands these functions the ActionResult, the
output directories' Tree messages, and the Action and Command when the CAS has them:

    exit_code      ``exit_code_text``            "0\\n"
    stdout, stderr ``stdout`` / ``stderr``        raw bytes, or the digest of the bytes
    outputs/...    ``outputs``                    path -> node (files, trees, symlinks)
    result.json    ``result_json``                protobuf's JSON mapping
    action/        ``command_text``, ``action_json``, ``input_root``

Output paths come from the server: each is checked like a Directory entry's name, one
segment at a time (no "", ".", ".." or NUL, not absolute), and two outputs may not claim
one path or a path below a file; a bad one is ``BadDirectory`` (EIO).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf import json_format
from google.protobuf.message import Message

from casfs._proto import remote_execution_pb2 as re_pb2
from casfs.digest import Digest, DigestFunction
from casfs.trees.model import BadDirectory, Directory, check_name, proto_digest


@dataclass(frozen=True, slots=True)
class Inline:
    """Bytes carried in the ActionResult itself (``stdout_raw``, an output's contents)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class InCas:
    """Bytes in the CAS, by digest."""

    digest: Digest


Content = Inline | InCas


@dataclass(frozen=True, slots=True)
class OutputFile:
    content: Content
    executable: bool


@dataclass(frozen=True, slots=True)
class OutputTree:
    """An output directory: its root Directory and, from its Tree message, every
    Directory below it by digest (empty when only ``root_directory_digest`` was given:
    the Directories are then in the CAS)."""

    root: Digest
    directories: Mapping[Digest, Directory] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputSymlink:
    target: str


@dataclass(frozen=True, slots=True)
class OutputParent:
    """A directory that holds outputs below it but is no output itself."""

    names: frozenset[str]


OutputNode = OutputFile | OutputTree | OutputSymlink | OutputParent


def exit_code_text(result: re_pb2.ActionResult) -> bytes:
    """The ``exit_code`` file: the number and a newline."""
    return f"{result.exit_code}\n".encode()


def _stream(raw: bytes, digest: re_pb2.Digest, has_digest: bool, fn: DigestFunction) -> Content:
    if raw or not has_digest:
        return Inline(raw)
    return InCas(proto_digest(digest, fn, "ActionResult"))


def stdout(result: re_pb2.ActionResult, function: DigestFunction) -> Content:
    """The ``stdout`` file's bytes: inline when the result carries them, else by digest."""
    has = result.HasField("stdout_digest")
    return _stream(result.stdout_raw, result.stdout_digest, has, function)


def stderr(result: re_pb2.ActionResult, function: DigestFunction) -> Content:
    """The ``stderr`` file's bytes: inline when the result carries them, else by digest."""
    has = result.HasField("stderr_digest")
    return _stream(result.stderr_raw, result.stderr_digest, has, function)


def split_path(path: str, what: str) -> list[str]:
    """An output path's segments; ``BadDirectory`` unless each is a proper name."""
    if path.startswith("/"):
        raise BadDirectory(f"{what}: output path {path[:200]!r} is absolute")
    parts = path.split("/")
    for part in parts:
        check_name(part, f"{what}: output path {path[:200]!r}")
    return parts


def outputs(
    result: re_pb2.ActionResult,
    function: DigestFunction,
    trees: Mapping[Digest, tuple[Directory, Mapping[Digest, Directory]]] | None = None,
    what: str = "ActionResult",
) -> dict[str, OutputNode]:
    """Every node under ``outputs/`` by path ("" is ``outputs/`` itself): output files,
    output directories (from ``trees``, the parsed Tree messages by tree digest, when
    given) and output symlinks, with the directories above them."""
    nodes: dict[str, OutputNode] = {}

    def claim(path: str, node: OutputNode) -> None:
        parts = split_path(path, what)
        for depth in range(len(parts)):
            parent = "/".join(parts[:depth])
            existing = nodes.get(parent)
            if existing is not None and not isinstance(existing, OutputParent):
                raise BadDirectory(f"{what}: output {path!r} lies below another output")
            names = existing.names if isinstance(existing, OutputParent) else frozenset()
            nodes[parent] = OutputParent(names | {parts[depth]})
        if path in nodes:
            raise BadDirectory(f"{what}: two outputs at {path!r}")
        nodes[path] = node

    for item in result.output_files:
        content: Content = (
            Inline(item.contents)
            if item.contents or not item.HasField("digest")
            else InCas(proto_digest(item.digest, function, what))
        )
        claim(item.path, OutputFile(content, item.is_executable))
    for directory in result.output_directories:
        if directory.HasField("tree_digest"):
            tree_digest = proto_digest(directory.tree_digest, function, what)
            parsed = (trees or {}).get(tree_digest)
            if parsed is not None:
                root, below = parsed
                claim(directory.path, OutputTree(root.digest, below))
                continue
        if directory.HasField("root_directory_digest"):
            claim(
                directory.path,
                OutputTree(proto_digest(directory.root_directory_digest, function, what)),
            )
            continue
        raise BadDirectory(f"{what}: output directory {directory.path!r} has no tree to show")
    symlinks = [
        *result.output_symlinks,
        *result.output_file_symlinks,
        *result.output_directory_symlinks,
    ]
    seen: set[str] = set()
    for link in symlinks:
        if link.path in seen:  # deprecated fields may repeat output_symlinks
            continue
        seen.add(link.path)
        if not link.target or "\0" in link.target:
            raise BadDirectory(f"{what}: output symlink {link.path!r} has a bad target")
        claim(link.path, OutputSymlink(link.target))
    nodes.setdefault("", OutputParent(frozenset()))
    return nodes


def to_json(message: Message) -> bytes:
    """protobuf's JSON mapping of ``message``, indented, field names as in the .proto."""
    text = json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)
    return (text + "\n").encode()


def result_json(result: re_pb2.ActionResult) -> bytes:
    """The ``result.json`` file."""
    return to_json(result)


def action_json(action: re_pb2.Action) -> bytes:
    """The ``action/action.json`` file."""
    return to_json(action)


def input_root(action: re_pb2.Action, function: DigestFunction) -> Digest:
    """The digest of the action's input root (``action/input_root/``)."""
    return proto_digest(action.input_root_digest, function, "Action")


def command_digest(action: re_pb2.Action, function: DigestFunction) -> Digest:
    return proto_digest(action.command_digest, function, "Action")


def _quote(text: str) -> str:
    """``text`` as one shell word when it needs quoting, else as it is."""
    safe = text and all(c.isalnum() or c in "@%+=:,./-_" for c in text)
    return text if safe else "'" + text.replace("'", "'\\''") + "'"


def command_text(command: re_pb2.Command, action: re_pb2.Action | None = None) -> bytes:
    """The ``action/command`` file: the working directory, the environment and the
    argv (one line, shell-quoted), then the platform properties (the Action's, else the
    Command's) and the declared outputs."""
    lines = []
    if command.working_directory:
        lines.append(f"cd {_quote(command.working_directory)}")
    env = " ".join(f"{v.name}={_quote(v.value)}" for v in command.environment_variables)
    argv = " ".join(_quote(arg) for arg in command.arguments)
    lines.append(f"{env} {argv}".strip() if env else argv)
    platform = action.platform if action is not None and action.HasField("platform") else None
    if platform is None and command.HasField("platform"):
        platform = command.platform
    if platform is not None:
        lines.append("")
        lines.append("# platform")
        lines.extend(f"{p.name}={p.value}" for p in platform.properties)
    outputs = [*command.output_paths, *command.output_files, *command.output_directories]
    if outputs:
        lines.append("")
        lines.append("# outputs")
        lines.extend(outputs)
    return ("\n".join(lines) + "\n").encode()
