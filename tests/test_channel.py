"""Endpoint URLs and call metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from casfs.cas.channel import Endpoint, EndpointError, call_metadata, is_tvix, parse_endpoint
from casfs.config import RemoteConfig


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("grpc://cas.example:8980", Endpoint("cas.example:8980", tls=False)),
        ("http://127.0.0.1:50051", Endpoint("127.0.0.1:50051", tls=False)),
        ("grpcs://cas.example", Endpoint("cas.example:443", tls=True)),
        ("https://cas.example:8443/", Endpoint("cas.example:8443", tls=True)),
        ("grpc://[::1]:8980", Endpoint("[::1]:8980", tls=False)),
        ("unix:/run/cas.sock", Endpoint("unix:/run/cas.sock", tls=False)),
        ("unix:///run/cas.sock", Endpoint("unix:/run/cas.sock", tls=False)),
        # tvix castore, as tvix's tools spell it, and casfs's own spelling
        ("grpc+http://127.0.0.1:8000", Endpoint("127.0.0.1:8000", tls=False, tvix=True)),
        ("grpc+https://store.example", Endpoint("store.example:443", tls=True, tvix=True)),
        ("grpc+unix:///run/tvix.sock", Endpoint("unix:/run/tvix.sock", tls=False, tvix=True)),
        ("tvix+grpc://[::1]:8000", Endpoint("[::1]:8000", tls=False, tvix=True)),
        ("tvix+grpcs://store.example:8443", Endpoint("store.example:8443", tls=True, tvix=True)),
    ],
)
def test_parse_endpoint(url: str, expected: Endpoint) -> None:
    assert parse_endpoint(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "cas.example:8980",
        "ftp://x",
        "grpc://",
        "grpc://h:99999",
        "grpc://h/path",
        "unix:rel",
        "grpc+unix:rel",
        "tvix+grpc://",
        "grpc+http://h/path",
        "grpc+ftp://h",
    ],
)
def test_bad_endpoints(url: str) -> None:
    with pytest.raises(EndpointError):
        parse_endpoint(url)


def test_the_url_names_the_protocol() -> None:
    assert is_tvix("grpc+http://h:1") and is_tvix("tvix+grpc://h:1") and is_tvix("grpc+unix:/s")
    assert not any(is_tvix(u) for u in ["grpc://h:1", "http://h:1", "unix:/s", "grpcs://h"])


def test_metadata_has_headers_and_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  abc.def  \n")
    config = RemoteConfig(endpoint="grpc://h:1", headers=(("X-Team", "build"),), token_file=token)
    assert call_metadata(config) == (("x-team", "build"), ("authorization", "Bearer abc.def"))
    token.write_text("\n")
    with pytest.raises(EndpointError, match="empty"):
        call_metadata(config)
