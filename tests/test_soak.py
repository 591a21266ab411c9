"""The soak test in ``make test``: 32 readers and 8 writers through one mount for 20 s
(``CASFS_SOAK_SECONDS`` for longer; ``python -m tests.soak`` runs it alone)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.soak import soak
from tests.test_client_server import MIB


def test_soak_readers_and_writers(tmp_path: Path) -> None:
    seconds = float(os.environ.get("CASFS_SOAK_SECONDS", "20"))
    figures = soak(tmp_path, seconds)
    print("\n" + figures.report())
    assert not figures.errors, figures.errors
    assert figures.reads > 100 and figures.writes > 8  # it really ran
    # Flat: the block cache is full after the warm-up, and no descriptor is left open.
    assert figures.rss_end < figures.rss_start + 48 * MIB, figures.report()
    assert figures.fds_end <= figures.fds_start + 2, figures.report()
