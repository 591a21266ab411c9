"""TLS with a private CA, and bearer tokens, between the client and ``casfs serve``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from casfs.cas import errors
from casfs.cas.retry import RetryPolicy
from tests.servers import CasfsServer
from tests.test_client_server import run_client

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
