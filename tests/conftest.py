"""Shared fixtures: a real ``casfs serve`` on 127.0.0.1 and client configs for it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

import grpc
import pytest

from casfs.config import RemoteConfig, RetryPolicy
from tests.servers import CasfsServer


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI timeout, a ``kill``) interrupts the run like Ctrl-C, so fixtures
    still unmount their mounts and stop their servers instead of leaving them behind."""
    signal.signal(signal.SIGTERM, _interrupt)


# Patient enough to ride out a server restart, quick enough for tests.
TEST_RETRY = RetryPolicy(attempts=12, initial_backoff=0.1, max_backoff=1.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CasfsServer]:
    """A fresh embedded server with its own store, serving 'main' and ''."""
    with CasfsServer(tmp_path / "store") as running:
        yield running


def remote(endpoint: str, instance: str = "main", **overrides: object) -> RemoteConfig:
    """A client config for a test server."""
    settings: dict[str, object] = {"retry": TEST_RETRY, **overrides}
    return RemoteConfig(endpoint=endpoint, instance=instance, **settings)  # type: ignore[arg-type]


@pytest.fixture
def server_without_assets() -> Iterator[str]:
    """A real gRPC server on 127.0.0.1 that serves nothing of the Remote Asset API."""
    bare = grpc.server(ThreadPoolExecutor(max_workers=2))
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        bare.stop(grace=None)
