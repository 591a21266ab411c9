"""TLS with a private CA, and bearer tokens, between the client and ``casfs serve``."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from casfs.cas import errors
from casfs.cas.client import CasClient
from casfs.cli import _serve_config, build_parser
from casfs.config import MountConfig, RetryPolicy
from casfs.digest import Digest
from casfs.fs.mountpoint import fuse_options
from casfs.server.auth import load_tokens
from tests.mounts import CasfsMount, is_mounted
from tests.servers import REPO, CasfsServer
from tests.test_client_server import MIB, run_client, sha256_file, write_file

QUICK = RetryPolicy(attempts=2, initial_backoff=0.05)


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    new_key = ["-newkey", "rsa:2048", "-nodes"]
    openssl("req", "-x509", *new_key, "-days", "2", "-subj", "/CN=casfs test CA",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", *new_key, "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")  # fmt: skip
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf",
            "-out", "server.pem")  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _, _ = make_ca_and_server_cert(tmp_path / "other")
    with CasfsServer(tmp_path / "store", "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        tls = f"grpcs://127.0.0.1:{srv.port}"
        digest = run_client(tls, lambda c: c.upload_bytes(b"over TLS"), ca_file=ca)
        assert run_client(tls, lambda c: c.read_blob(digest), ca_file=ca) == b"over TLS"
        with pytest.raises(errors.Unavailable):  # a CA that did not sign the server's cert
            run_client(tls, lambda c: c.read_blob(digest), ca_file=other_ca, retry=QUICK)
        with pytest.raises(errors.Unavailable):  # plaintext against a TLS server
            run_client(srv.endpoint, lambda c: c.read_blob(digest), retry=QUICK)


def test_bearer_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# tokens\ns3cret-one\ns3cret-two\n")
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret-two\n")
    bad.write_text("guess\n")
    with CasfsServer(tmp_path / "store", "--token-file", str(tokens)) as srv:
        digest = run_client(srv.endpoint, lambda c: c.upload_bytes(b"auth"), token_file=good)
        assert run_client(srv.endpoint, lambda c: c.read_blob(digest), token_file=good) == b"auth"
        with pytest.raises(errors.PermissionDenied) as wrong:
            run_client(srv.endpoint, lambda c: c.read_blob(digest), token_file=bad)
        assert "PERMISSION_DENIED" in str(wrong.value)
        with pytest.raises(errors.PermissionDenied) as missing:
            run_client(srv.endpoint, lambda c: c.read_blob(digest))
        assert "UNAUTHENTICATED" in str(missing.value)
        assert "s3cret" not in srv.log.read_text()


def _tokens(tmp_path: Path) -> dict[str, Path]:
    """A token file with a read-write and a read-only token, and one file per client."""
    (tmp_path / "tokens").write_text("writer-s3cret\nreader-s3cret read-only\n")
    files = {}
    for name, token in [("writer", "writer-s3cret"), ("reader", "reader-s3cret"),
                        ("wrong", "guess")]:  # fmt: skip
        files[name] = tmp_path / f"{name}.token"
        files[name].write_text(token + "\n")
    return files


def test_a_read_only_token_reads_but_cannot_store(tmp_path: Path) -> None:
    tokens = _tokens(tmp_path)
    big = write_file(tmp_path / "big", 6 * MIB)
    with CasfsServer(tmp_path / "store", "--token-file", str(tmp_path / "tokens")) as srv:
        writer = {"token_file": tokens["writer"]}
        small = run_client(srv.endpoint, lambda c: c.upload_bytes(b"shared"), **writer)
        large = run_client(srv.endpoint, lambda c: c.upload_file(big), **writer)
        reader = {"token_file": tokens["reader"], "retry": QUICK}
        assert run_client(srv.endpoint, lambda c: c.read_blob(small), **reader) == b"shared"
        assert run_client(srv.endpoint, lambda c: c.read_range(large, 5, 10), **reader) == (
            big.read_bytes()[5:15]
        )
        other = write_file(tmp_path / "other", 6 * MIB)
        refused: list[Callable[[CasClient], Awaitable[object]]] = [
            lambda c: c.upload_bytes(b"not allowed"),  # BatchUpdateBlobs
            lambda c: c.upload_file(other),  # ByteStream Write, a client stream
        ]
        for attempt in refused:
            with pytest.raises(errors.PermissionDenied) as caught:
                run_client(srv.endpoint, attempt, **reader)
            assert "only read" in str(caught.value)
        with pytest.raises(errors.PermissionDenied):  # a wrong token on a client stream
            run_client(srv.endpoint, lambda c: c.upload_file(other), token_file=tokens["wrong"])
        assert not run_client(
            srv.endpoint, lambda c: c.contains(Digest.of_bytes(b"not allowed")),
            token_file=tokens["writer"],
        )  # fmt: skip
        assert "s3cret" not in srv.log.read_text()


def test_token_files_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("# comment\nfine\nsecret-x read-write\n")
    with pytest.raises(ValueError, match=r"bad:3: expected") as caught:
        load_tokens(bad)
    assert "secret-x" not in str(caught.value)
    good = tmp_path / "good"
    good.write_text("a\n\n  b read-only  \n")
    loaded = load_tokens(good)
    assert [t.read_only for t in loaded] == [False, True]
    assert "b" not in repr(loaded[1]).replace("bytes", "")


def test_serve_listens_on_loopback_by_default(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--store", str(tmp_path)])
    assert _serve_config(args).listen.startswith("127.0.0.1:")


def test_allow_other_only_when_asked_and_then_with_default_permissions(tmp_path: Path) -> None:
    plain = MountConfig(mountpoint=tmp_path, remote=None)
    assert "allow_other" not in fuse_options(plain)
    assert "default_permissions" in fuse_options(plain)
    shared = dataclasses.replace(plain, allow_other=True)
    assert {"allow_other", "default_permissions"} <= fuse_options(shared)


AS_NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def test_allow_other_lists_no_blob_of_a_private_upload(tmp_path: Path) -> None:
    """With --allow-other, another user's ls blobs/ shows the digest of an upload they may
    read and not that of a 0400 one (which uploads/ refuses them); a blob they can name
    still reads, with the mount's credentials."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to act as another user")
    shared = Path(tempfile.mkdtemp(prefix="casfs-allow-other-"))  # /tmp/pytest-of-root is 0700
    try:
        shared.chmod(0o755)
        with (
            CasfsServer(tmp_path / "store") as server,
            CasfsMount(
                shared / "mnt",
                "--remote",
                server.endpoint,
                "--cache-dir",
                str(tmp_path / "cache"),
                "--allow-other",
            ) as mount,
        ):
            uploads = mount.mountpoint / "main" / "uploads"
            blobs = mount.mountpoint / "main" / "blobs"
            secret, shared_text = b"the owner's secret\n", b"for everyone\n"
            fd = os.open(uploads / "private", os.O_WRONLY | os.O_CREAT, 0o400)
            os.write(fd, secret)
            os.close(fd)
            (uploads / "public").write_bytes(shared_text)
            private, public = Digest.of_bytes(secret), Digest.of_bytes(shared_text)
            assert (blobs / private.hash / str(private.size)).read_bytes() == secret  # owner

            def as_nobody(*args: str) -> subprocess.CompletedProcess[bytes]:
                return subprocess.run([*AS_NOBODY, *args], capture_output=True, timeout=60)

            refused = as_nobody("cat", str(uploads / "private"))
            assert refused.returncode != 0 and b"Permission denied" in refused.stderr
            assert as_nobody("cat", str(uploads / "public")).stdout == shared_text
            listed = as_nobody("ls", str(blobs)).stdout.decode().split()
            assert public.hash in listed
            assert private.hash not in listed
            assert as_nobody("ls", str(blobs / private.hash)).stdout == b""
            assert {private.hash, public.hash} <= set(os.listdir(blobs))  # the owner: all
            tree = as_nobody("getfattr", "-n", "user.casfs.digest", str(uploads))
            assert tree.returncode != 0 and b"Permission denied" in tree.stderr  # it leads there
            named = as_nobody("cat", str(blobs / private.hash / str(private.size)))
            assert named.stdout == secret  # a name known is readable: the README says so
    finally:
        if not is_mounted(shared / "mnt"):  # (CasfsMount always unmounts)
            shutil.rmtree(shared, ignore_errors=True)


def _mount_options(mountpoint: Path) -> set[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == str(mountpoint):
                return set(fields[-1].split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


def test_mount_over_tls_with_a_token_never_logs_it(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    tokens = _tokens(tmp_path)
    source = write_file(tmp_path / "src", 3 * MIB)
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    args += ["--token-file", str(tmp_path / "tokens")]
    with CasfsServer(tmp_path / "store", "-v", *args) as srv:
        remote = f"grpcs://127.0.0.1:{srv.port}"
        cache = tmp_path / "cache"
        common = ["--remote", remote, "--ca-file", str(ca), "--cache-dir", str(cache), "-v"]
        with CasfsMount(tmp_path / "mnt", *common, "--token-file", str(tokens["writer"])) as m:
            uploads = m.mountpoint / "main" / "uploads"
            with open(uploads / "f", "wb") as file:
                file.write(source.read_bytes())
                file.flush()
                spool = cache / "spool"
                assert spool.stat().st_mode & 0o777 == 0o700
                assert cache.stat().st_mode & 0o777 == 0o700
                for path in spool.iterdir():
                    assert path.stat().st_mode & 0o777 == 0o600, path
            blob = m.mountpoint / "main" / "blobs" / sha256_file(source) / str(3 * MIB)
            assert blob.read_bytes() == source.read_bytes()
            options = _mount_options(m.mountpoint)
            assert "default_permissions" in options and "allow_other" not in options
        with CasfsMount(tmp_path / "mnt2", *common, "--token-file", str(tokens["reader"])) as m:
            blob = m.mountpoint / "main" / "blobs" / sha256_file(source) / str(3 * MIB)
            assert blob.read_bytes() == source.read_bytes()
            with pytest.raises(PermissionError):  # EACCES: the read-only token cannot store
                (m.mountpoint / "main" / "uploads" / "g").write_bytes(b"refused")
        name = f"main/blobs/{sha256_file(source)}/{3 * MIB}"
        (tmp_path / "other").mkdir()
        other_ca, _, _ = make_ca_and_server_cert(tmp_path / "other")
        wrong_ca = ["--remote", remote, "--ca-file", str(other_ca), "--retries", "2"]
        for mountpoint, args, expected, said in [
            ("mnt3", [*common, "--token-file", str(tokens["wrong"])], errno.EACCES, "refused"),
            ("mnt4", common, errno.EACCES, "refused"),  # no token at all
            # the server is not who it should be
            ("mnt5", [*wrong_ca, "--token-file", str(tokens["writer"])], errno.EIO, "reach"),
        ]:
            # The mount checks the remote first, and says why it will not mount.
            (tmp_path / mountpoint).mkdir()
            refused = subprocess.run(
                [sys.executable, "-m", "casfs", "mount", str(tmp_path / mountpoint), *args],
                capture_output=True, text=True, cwd=REPO, timeout=120,
            )  # fmt: skip
            assert refused.returncode == 1 and said in refused.stderr, refused.stderr
            assert "s3cret" not in refused.stderr
            assert not is_mounted(tmp_path / mountpoint)
            # Told to mount all the same, it does, and every access fails the same way.
            with CasfsMount(tmp_path / mountpoint, *args, "--no-check-remote") as m:
                with pytest.raises(OSError) as caught:
                    (m.mountpoint / name).stat()
                assert caught.value.errno == expected, mountpoint
                assert "s3cret" not in m.log_text()
        for log in [tmp_path / "mnt-mount.log", tmp_path / "mnt2-mount.log", srv.log]:
            text = log.read_text()
            assert "DEBUG" in text and "s3cret" not in text, log
    for path in (srv.store / "uploads", srv.store / "cas", srv.store / "tmp"):
        assert path.stat().st_mode & 0o777 == 0o700, path
