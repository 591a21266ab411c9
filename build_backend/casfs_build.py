"""casfs's PEP 517 build backend: setuptools, plus the man page and the shell completions
generated from the argument parser (build_backend/generate.py) into every wheel.

The generator imports casfs.cli, and so casfs's dependencies: a wheel's build environment
gets them (all but pyfuse3, which the parser never imports and which compiles against
libfuse) besides pyproject.toml's build requirements (setuptools, shtab). The generated
files land under build/generated/, the ``data-files`` of pyproject.toml, so a wheel
installs them under its prefix's share/ (``<venv>/share/man/man1/casfs.1``, where man(1)
and pipx find them). An sdist carries the generator, not its output. A failing generator
fails the build.

pip asks for a source tree's metadata (``prepare_metadata_*``) before it builds the
dependencies, pyfuse3 among them, whose own build fails on a machine without libfuse 3's
headers with a message that names no package to install. So those two hooks check for
libfuse 3 first and, when pkg-config does not find it, fail with the Debian command that
installs it, and the way to install without the mount (``CASFS_WITHOUT_FUSE=1``). A wheel
build (``python -m build``) needs no libfuse and does not check; installing a built wheel
runs none of this, so there pyfuse3's own message is what pip shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401 - the hooks passed through unchanged
    build_sdist,
    get_requires_for_build_sdist,
)

GENERATED = Path("build/generated")  # relative to the source tree, as in pyproject.toml
NOT_FOR_THE_GENERATOR = {"pyfuse3"}


def _generator_requires() -> list[str]:
    with open("pyproject.toml", "rb") as file:
        project = tomllib.load(file)["project"]
    dependencies: list[str] = project["dependencies"]
    return [
        requirement
        for requirement in dependencies
        if re.split(r"[^A-Za-z0-9._-]", requirement, maxsplit=1)[0] not in NOT_FOR_THE_GENERATOR
    ]


WITHOUT_FUSE = "CASFS_WITHOUT_FUSE"
NO_LIBFUSE = f"""\
casfs: pip is about to build pyfuse3, which `casfs mount` runs on, and it compiles against
libfuse 3, which pkg-config does not find here. Install it first, then pip install again:

    sudo apt-get install fuse3 libfuse3-dev pkg-config      (Debian, Ubuntu)
    sudo dnf install fuse3 fuse3-devel pkgconf-pkg-config   (Fedora)

A casfs without the mount (serve, put, get, stat need no FUSE) installs without pyfuse3:
    {WITHOUT_FUSE}=1 pip install --no-deps <casfs> && pip install {{others}}
"""


def _require_libfuse() -> None:
    """Exit with ``NO_LIBFUSE`` unless pkg-config finds fuse3 (or the check is waived)."""
    if os.environ.get(WITHOUT_FUSE):
        return
    try:
        found = subprocess.run(["pkg-config", "--exists", "fuse3"], check=False).returncode == 0
    except OSError:  # no pkg-config at all
        found = False
    if not found:
        others = " ".join(f"'{r}'" for r in _generator_requires())
        sys.stderr.write(NO_LIBFUSE.format(others=others))
        raise SystemExit(1)


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    _require_libfuse()
    name: str = _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)
    return name


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    _require_libfuse()
    name: str = _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)
    return name


def _generate() -> None:
    subprocess.run([sys.executable, "build_backend/generate.py", str(GENERATED)], check=True)


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *_generator_requires()]


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [*_setuptools.get_requires_for_build_editable(config_settings), *_generator_requires()]


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _generate()
    name: str = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    return name


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _generate()
    name: str = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return name
