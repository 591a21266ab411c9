"""Write the man page and the bash and zsh completions of ``casfs``, generated from its
argument parser, under a prefix-like tree that a wheel installs as data files:

    python build_backend/generate.py OUT
    # OUT/share/man/man1/casfs.1
    # OUT/share/bash-completion/completions/casfs
    # OUT/share/zsh/site-functions/_casfs

Needs casfs's own dependencies (the parser imports them) and shtab; the build backend runs
it in a subprocess of the build environment. Any failure raises: a wheel without its man page
is not built.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import shtab

# The parser's help names default directories under the user's home: the page names them
# as a user's defaults, not the builder's directories.
os.environ.update(
    XDG_CONFIG_HOME="~/.config", XDG_DATA_HOME="~/.local/share", XDG_CACHE_HOME="~/.cache"
)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the casfs being built

from casfs import __version__
from casfs.cli import build_parser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from manpage import render

OUTPUTS = {
    "man": Path("share/man/man1/casfs.1"),
    "bash": Path("share/bash-completion/completions/casfs"),
    "zsh": Path("share/zsh/site-functions/_casfs"),
}

# Arguments that name a directory (the mount's NAME|MOUNTPOINT completes as one too).
_DIRECTORIES = {"store", "cache_dir", "mountpoint", "target"}


def _mark_paths(parser: argparse.ArgumentParser) -> None:
    """Tell shtab which arguments complete as directories and which as files (those typed
    ``Path``, and put's FILEs)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _mark_paths(subparser)
        elif action.dest in _DIRECTORIES:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif action.type is Path or action.dest == "files":
            action.complete = shtab.FILE  # type: ignore[attr-defined]


def generate(out: Path) -> list[Path]:
    """Write the three files under ``out``; returns their paths."""
    parser = build_parser()
    _mark_paths(parser)
    texts = {
        "man": render(parser, __version__),
        "bash": shtab.complete(parser, shell="bash"),
        "zsh": shtab.complete(parser, shell="zsh"),
    }
    written = []
    for kind, relative in OUTPUTS.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts[kind])
        written.append(path)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1])):
        print(path)
