"""The shipped systemd units: systemd-analyze verify accepts each one, with no warning,
and their command lines are ones casfs accepts."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from casfs.cli import build_parser
from casfs.remotes import load_remotes
from tests.servers import REPO

UNITS = REPO / "casfs" / "systemd"
INSTALLED = "/opt/casfs/bin/casfs"  # where make install puts casfs (PREFIX=/opt/casfs)
CASFS = Path(sys.executable).parent / "casfs"


def _units() -> list[Path]:
    return sorted(UNITS.glob("*.service")) + sorted((UNITS / "user").glob("*.service"))


def test_every_unit_runs_the_installed_casfs() -> None:
    assert len(_units()) == 4
    for unit in _units():
        exec_start = [line for line in unit.read_text().splitlines() if line.startswith("Exec")]
        assert exec_start and all(f"={INSTALLED} " in line for line in exec_start), unit


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze (make)")
@pytest.mark.parametrize("unit", _units(), ids=lambda unit: unit.relative_to(UNITS).as_posix())
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    # The same unit, running this checkout's casfs: verify checks that ExecStart exists.
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED, str(CASFS)))
    command = ["systemd-analyze", "verify", "--man=no"]
    env = dict(os.environ)
    if unit.parent.name == "user":
        command.insert(1, "--user")
        runtime = tmp_path / "runtime"  # a user manager needs one
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    name = copy.name.replace("@.", "@test.")  # a template is verified as an instance
    result = subprocess.run(
        [*command, name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("unit", _units(), ids=lambda unit: unit.relative_to(UNITS).as_posix())
def test_unit_command_lines_parse(unit: Path) -> None:
    line = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart=").replace("%i", "work"))[1:]
    args = build_parser().parse_args(argv)
    assert args.command in ("mount", "serve")
    if args.command == "mount":
        assert args.target == "work" and args.mountpoint is None and not args.daemon


def test_the_example_config_is_valid() -> None:
    remotes = load_remotes(UNITS / "config.example.toml")
    assert set(remotes) == {"corp", "lab", "local"}
    assert all(remote.mountpoint for remote in remotes.values())
