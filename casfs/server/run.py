"""``casfs serve``'s loop: build the server from its settings, say where it listens (on
stdout and to systemd), and run until SIGTERM or SIGINT, then stop with a short grace."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from casfs import notify
from casfs.config import (
    DEFAULT_ABANDON_AFTER,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_PARTIAL_UPLOADS,
    DEFAULT_MAX_STREAMS,
    ConfigError,
    ServeConfig,
)
from casfs.prometheus import RpcCollector, serve_metrics
from casfs.rpcstats import RpcStats
from casfs.server.app import Security, build_server, listen_address
from casfs.server.auth import load_tokens
from casfs.server.instances import Instances
from casfs.server.stopsignals import StopSignals
from casfs.store.partials import UploadLimits

log = logging.getLogger("casfs")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """The settings of a running server beyond its instances and address."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    token_file: Path | None = None
    max_partial_size: int | None = None
    max_partial_uploads: int = DEFAULT_MAX_PARTIAL_UPLOADS
    abandon_after: float = DEFAULT_ABANDON_AFTER
    max_streams: int = DEFAULT_MAX_STREAMS
    stream_idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    metrics: str | None = None  # [HOST:]PORT of the Prometheus endpoint


def serve_until_signalled(config: ServeConfig, options: ServeOptions) -> None:
    """Serve until SIGTERM or SIGINT (their handlers are installed before "listening" is
    printed: a supervisor may signal as soon as it reads it), then stop, giving calls
    in flight 5 seconds. A setting the server refuses (TLS without its key, a bad token
    file, bad limits) raises ``ConfigError``; an unreadable file ``OSError``."""
    rpc_stats = RpcStats() if options.metrics else None
    with contextlib.ExitStack() as stack:
        if rpc_stats is not None and options.metrics is not None:
            stack.enter_context(serve_metrics(options.metrics, RpcCollector(rpc_stats, "server")))
        try:
            security = Security(
                tls_cert=options.tls_cert,
                tls_key=options.tls_key,
                tokens=tuple(load_tokens(options.token_file)) if options.token_file else (),
            )
            server, port = build_server(
                Instances(
                    config.instances,
                    uploads=UploadLimits(
                        options.max_partial_size,
                        options.max_partial_uploads,
                        options.abandon_after,
                    ),
                ),
                config.listen,
                security=security,
                max_streams=options.max_streams,
                stream_idle_timeout=options.stream_idle_timeout,
                rpc_stats=rpc_stats,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
        address = listen_address(config.listen, port)
        signals = StopSignals()  # whichever thread the kernel hands a signal to
        stack.callback(signals.close)
        print(f"casfs serve: listening on {address}", flush=True)
        notify.ready(f"listening on {address}")
        signals.wait()
        log.info("stopping")
        notify.stopping("stopping")
        server.stop(grace=5).wait()
