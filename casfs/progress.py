"""Progress bars for ``casfs put`` and ``casfs get``: tqdm on stderr, only for a person.

A bar is shown when stderr is a terminal and the transfer is large (``LARGE`` bytes or
more; of unknown size: once it has taken a second). Otherwise there is no bar at all, so
scripts, pipes and log files get clean output. Bars are told absolute positions, from
whatever thread does the work (tqdm serialises its own drawing); a position that goes
back (a resumed upload) moves the bar back.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from tqdm import tqdm

LARGE = 8 << 20


class Progress:
    """One file's bar; ``phase`` names what is being done (hashing, uploading, ...)."""

    def __init__(self, label: str, total: int | None) -> None:
        self._label = label
        self._phase = ""
        shown = sys.stderr.isatty() and (total is None or total >= LARGE)
        self._bar: tqdm[NoReturn] | None = None
        if shown:
            self._bar = tqdm(
                total=total,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
                delay=1.0 if total is None else 0.0,
            )

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, phase: str, done: int) -> None:
        """``done`` bytes of ``phase`` so far."""
        bar = self._bar
        if bar is None:
            return
        if phase != self._phase:
            self._phase = phase
            bar.set_description_str(f"{phase} {self._label}", refresh=False)
            bar.reset(total=bar.total)
        bar.update(done - bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Progress]:
    """A bar for one transfer, removed from the terminal when the block ends."""
    bar = Progress(label, total)
    try:
        yield bar
    finally:
        bar.close()
