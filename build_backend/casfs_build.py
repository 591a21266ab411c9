"""casfs's PEP 517 build backend: setuptools, plus the man page and the shell completions
generated from the argument parser (build_backend/generate.py) into every wheel.

The generator imports casfs.cli, and so casfs's dependencies: a wheel's build environment
gets them (all but pyfuse3, which the parser never imports and which compiles against
libfuse) besides pyproject.toml's build requirements (setuptools, shtab). The generated
files land under build/generated/, the ``data-files`` of pyproject.toml, so a wheel
installs them under its prefix's share/ (``<venv>/share/man/man1/casfs.1``, where man(1)
and pipx find them). An sdist carries the generator, not its output. A failing generator
fails the build.
"""

from __future__ import annotations

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
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
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
