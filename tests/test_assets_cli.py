"""``casfs asset push|fetch`` and ``casfs find`` as a user runs them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.servers import CasfsServer
from tests.test_cli import casfs

TOOL = "https://example.com/dist/tool-1.2.tar.gz"


def sri_of_file(path: Path) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def lines(output: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.decode().splitlines()]


def test_offline_mirror_with_casfs_put_and_a_checksum(server: CasfsServer, tmp_path: Path) -> None:
    """Copy an archive in with casfs put; a fetch by its checksum answers it under any URI,
    and casfs get brings back the same bytes."""
    archive = tmp_path / "tool-1.2.tar.gz"
    archive.write_bytes(os.urandom(300_000))
    digest = casfs("put", "--remote", server.endpoint, str(archive)).stdout.decode().strip()
    checksum = f"checksum.sri={sri_of_file(archive)}"
    fetched = casfs("asset", "fetch", "--remote", server.endpoint, TOOL, "-q", checksum)
    assert fetched.returncode == 0, fetched.stderr
    (answer,) = lines(fetched.stdout)
    assert (answer["digest"], answer["uri"]) == (digest, TOOL)
    got = casfs("get", "--remote", server.endpoint, str(answer["digest"]), str(tmp_path / "out"))
    assert got.returncode == 0 and (tmp_path / "out").read_bytes() == archive.read_bytes()


def test_push_with_metadata_then_fetch(server: CasfsServer, tmp_path: Path) -> None:
    doc = tmp_path / "report.json"
    doc.write_text('{"ok": true}\n')
    pushed = casfs(
        "asset", "push", "--remote", server.endpoint, "urn:casfs:report:42", str(doc),
        "-q", "content_type=application/json", "-q", 'graviton.namespace={"schema": "v2"}',
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    digest = pushed.stdout.decode().strip()
    fetched = casfs("asset", "fetch", "--remote", server.endpoint, "urn:casfs:report:42")
    (answer,) = lines(fetched.stdout)
    assert answer["digest"] == digest
    assert answer["qualifiers"] == {
        "checksum.sri": sri_of_file(doc),  # added by push for a file
        "content_type": "application/json",
        "graviton.namespace": '{"schema": "v2"}',
    }
    missing = casfs("asset", "fetch", "--remote", server.endpoint, "urn:casfs:report:43")
    assert missing.returncode == 1
    assert b"NOT_FOUND" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_catalog_in_the_embedded_store(tmp_path: Path) -> None:
    """With no --remote, push goes to the embedded store and find reads its catalog: by URI
    prefix, qualifier, content type, size range and digest; a blob pushed under two URIs
    is one line with two names in --by-digest."""
    store = tmp_path / "store"
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_text("small\n")
    big.write_bytes(os.urandom(100_000))
    for uri, path, content_type in [
        ("https://example.com/a/small.txt", small, "text/plain"),
        ("https://mirror.example.org/small.txt", small, "text/plain"),
        ("https://example.com/b/big.bin", big, "application/octet-stream"),
    ]:
        qualifier = f"content_type={content_type}"
        result = casfs("asset", "push", "--store", str(store), uri, str(path), "-q", qualifier)
        assert result.returncode == 0, result.stderr
    small_digest = casfs("put", "--store", str(store), str(small)).stdout.decode().strip()

    def find(*args: str) -> list[str]:
        result = casfs("find", "--store", str(store), *args)
        return [str(d["uri"]) for d in lines(result.stdout)]

    assert find() == [
        "https://example.com/a/small.txt",
        "https://example.com/b/big.bin",
        "https://mirror.example.org/small.txt",
    ]
    assert find("https://example.com/") == [
        "https://example.com/a/small.txt",
        "https://example.com/b/big.bin",
    ]
    assert find("--content-type", "application/octet-stream") == ["https://example.com/b/big.bin"]
    assert find("-q", "content_type=text/plain", "https://mirror") == [
        "https://mirror.example.org/small.txt"
    ]
    assert find("--min-size", "1000") == ["https://example.com/b/big.bin"]
    assert find("--max-size", "1000", "https://example.com/") == ["https://example.com/a/small.txt"]
    assert len(find("--digest", small_digest)) == 2
    assert len(find("--has", "checksum.sri")) == 3

    grouped = lines(casfs("find", "--store", str(store), "--by-digest").stdout)
    names = {str(g["digest"]): [n["uri"] for n in g["names"]] for g in grouped}  # type: ignore[attr-defined]
    assert names[small_digest] == [
        "https://example.com/a/small.txt",
        "https://mirror.example.org/small.txt",
    ]
    assert len(grouped) == 2

    table = casfs("find", "--store", str(store), "--table").stdout.decode().splitlines()
    assert table[0].split()[:3] == ["DIGEST", "SIZE", "URI"]
    assert len(table) == 4 and "content_type=text/plain" in table[1]

    nothing = casfs("find", "--store", str(store), "ftp://")
    assert nothing.returncode == 1 and nothing.stdout == b""


def test_find_on_a_store_with_no_catalog(tmp_path: Path) -> None:
    result = casfs("find", "--store", str(tmp_path / "empty"))
    assert result.returncode == 1
    assert b"has no asset catalog" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["asset", "push", "https://example.com/../../etc/passwd", "0" * 64 + "/0"],
        ["asset", "fetch", "relative/path"],
        ["asset", "fetch", TOOL, "-q", "novalue"],
        ["asset", "fetch", TOOL, "-q", "a=1", "-q", "a=2"],
        ["asset", "fetch", TOOL, "-q", "checksum.sri=sha256-AAAA"],
        ["find", "--digest", "xyz"],
    ],
    ids=["dotdot", "no-scheme", "no-value", "duplicate", "short-sri", "bad-digest"],
)
def test_bad_input_is_a_usage_error_before_any_call(args: list[str], tmp_path: Path) -> None:
    """Refused with exit 2 and one line naming the problem; no server is needed for it."""
    result = casfs(*args, "--store", str(tmp_path / "store"))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_server_without_the_api_is_named_clearly(server_without_assets: str) -> None:
    for args in (["fetch", TOOL], ["push", TOOL, "0" * 64 + "/0"]):
        result = casfs("asset", *args, "--remote", server_without_assets, "--retries", "1")
        assert result.returncode == 1
        message = result.stderr.decode()
        assert len(message.splitlines()) == 1, message
        assert "does not serve the Remote Asset API" in message, message
