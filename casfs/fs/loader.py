"""The command line's one way in to the modules that import pyfuse3 (mount, operations,
inodes): only a command that mounts loads them, so serve, put, get, stat and status run
without pyfuse3, and its absence is an installation error of one line that says what to
install, never a traceback."""

from __future__ import annotations

from collections.abc import Callable

from casfs.config import ConfigError

INSTALL_HINT = (
    "apt-get install fuse3 libfuse3-dev pkg-config, then pip install pyfuse3 "
    "in the environment casfs runs from"
)


class FuseMissing(ConfigError):
    """pyfuse3 (or the libfuse it links) cannot be imported: casfs is installed without
    what ``casfs mount`` needs (the command line exits 2 with the message)."""


def load_mount() -> Callable[..., None]:
    """:func:`casfs.fs.mount.mount`, imported now. Raises :class:`FuseMissing` naming what
    to install when pyfuse3 or its libfuse cannot be loaded; any other import failure is a
    bug and propagates unchanged."""
    try:
        import pyfuse3  # noqa: F401 - imported for its failure only
    except ImportError as error:  # also libfuse3.so.3 missing: an ImportError from pyfuse3
        raise FuseMissing(
            f"mount needs pyfuse3, which cannot be loaded ({error}): {INSTALL_HINT}"
        ) from None
    from casfs.fs.mount import mount

    return mount
