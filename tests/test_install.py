"""casfs installed as a Python user installs it: ``python -m build``, then the wheel in an
empty venv (no system site-packages) mounting and reading a blob with the installed
``casfs``; ``pipx install .``; the man page and the completions those installs carry.

Slow (a build, a venv, a pipx install: about two minutes together here); marked ``install``
so ``-m 'not install'`` leaves them out, and ``make test`` runs them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.mounts import CasfsMount
from tests.servers import REPO, CasfsServer

# A build or a pipx install takes a minute or two here, more on a loaded machine.
pytestmark = [pytest.mark.install, pytest.mark.timeout(900)]

UNITS = ("casfs@.service", "casfs-serve.service", "user/casfs@.service", "config.example.toml")


def run(
    *command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; it must succeed (its output is in the failure)."""
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=540,
    )  # fmt: skip
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build``: the sdist, then the wheel built from that sdist (so a file the
    sdist lacks fails the wheel's build)."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, REPO)
    return out


def test_sdist_carries_the_sources_the_wheel_is_built_from(dist: Path) -> None:
    (sdist,) = dist.glob("casfs-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = [
        "pyproject.toml",
        "build_backend/casfs_build.py",
        "build_backend/generate.py",
        "protos/casfs/_proto/remote_execution.proto",
        "casfs/_proto/remote_execution_pb2.py",
        "Makefile",
        *(f"casfs/systemd/{unit}" for unit in UNITS),
    ]
    assert [name for name in needed if name not in names] == []


def test_wheel_in_an_empty_venv_mounts_and_reads_a_blob(
    dist: Path, server: CasfsServer, tmp_path: Path
) -> None:
    (wheel,) = dist.glob("casfs-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    casfs = venv / "bin" / "casfs"
    where = run(venv / "bin" / "python", "-c", "import casfs; print(casfs.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not REPO

    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "blob").write_bytes(data)
    digest = run(casfs, "put", "--remote", server.endpoint, tmp_path / "blob").stdout.strip()
    with CasfsMount(tmp_path / "mnt", "--remote", server.endpoint, command=[str(casfs)]) as mount:
        blob = mount.mountpoint / "main" / "blobs" / digest
        hashed = run("sha256sum", blob).stdout.split()[0]
        assert hashed == hashlib.sha256(data).hexdigest() == digest.split("/")[0]

    assert (venv / "bin" / "mount.casfs").is_file()
    units = run(
        venv / "bin" / "python",
        "-c",
        "import importlib.resources as r; print(r.files('casfs') / 'systemd')",
        cwd=tmp_path,
    )
    assert all((Path(units.stdout.strip()) / unit).is_file() for unit in UNITS)
    # man(1) finds the page beside the casfs on PATH (its ../share/man)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("MANPATH", None)
    page = run("man", "-w", "casfs", env=env).stdout.strip()
    assert page == str(venv / "share" / "man" / "man1" / "casfs.1")
    text = run("man", "-l", page, env={**env, "MANWIDTH": "100"}).stdout
    for section in ("SYNOPSIS", "COMMANDS", "EXAMPLES", "EXIT STATUS"):
        assert section in text
    assert "--no-check-remote" in text.replace("\u2010", "-")  # the parser's options, all
    completion = venv / "share" / "bash-completion" / "completions" / "casfs"
    assert complete_bash(completion, "casfs mo") == ["mount"]


def complete_bash(script: Path, line: str) -> list[str]:
    """What bash offers for the last word of ``line`` after sourcing ``script``."""
    words = line.split(" ")
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE='{line}'; COMP_POINT={len(line)}\n"
        "_shtab_casfs; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    return run("bash", "-c", program).stdout.split()


def test_pipx_install_puts_casfs_and_mount_casfs_on_path(dist: Path, tmp_path: Path) -> None:
    """pipx installs the wheel ``dist`` built (``pipx install .`` builds that same wheel
    with the same backend first; pip builds it from the checkout in the test below), so
    the suite builds casfs once less."""
    (wheel,) = dist.glob("casfs-*.whl")
    env = {
        **os.environ,
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "bin"),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
    }
    run(sys.executable, "-m", "pipx", "install", wheel, cwd=tmp_path, env=env)
    version = run(tmp_path / "bin" / "casfs", "--version").stdout
    assert version.startswith("casfs ") and "pyfuse3 3." in version, version
    helper = subprocess.run([tmp_path / "bin" / "mount.casfs"], capture_output=True, text=True)
    assert helper.returncode == 2 and "usage: mount.casfs" in helper.stderr
    assert (tmp_path / "man" / "man1" / "casfs.1").is_file()


def test_pip_install_without_libfuse_says_what_to_install(tmp_path: Path) -> None:
    """pip install of the source where pkg-config finds no fuse3 (PKG_CONFIG_LIBDIR hides
    it) stops before pyfuse3's build with the command that installs libfuse; with
    CASFS_WITHOUT_FUSE=1 and --no-deps it installs, and the mount says what it lacks."""
    run(sys.executable, "-m", "venv", tmp_path / "venv")
    pip = tmp_path / "venv" / "bin" / "pip"
    env = {**os.environ, "PKG_CONFIG_LIBDIR": str(tmp_path / "no-pkgconfig")}
    refused = subprocess.run(
        [str(pip), "install", "--no-cache-dir", str(REPO)],
        capture_output=True, text=True, env=env, timeout=540,
    )  # fmt: skip
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "sudo apt-get install fuse3 libfuse3-dev pkg-config" in output, output
    assert "CASFS_WITHOUT_FUSE=1 pip install --no-deps" in output, output
    assert not list((tmp_path / "venv").glob("lib/python*/site-packages/pyfuse3*")), output
    # The advice, followed as printed (the venv's pip for "pip", this tree for "<casfs>").
    (advice,) = [line for line in output.splitlines() if "CASFS_WITHOUT_FUSE=1 pip" in line]
    command = advice.strip().replace("pip install", f"{pip} install --no-cache-dir")
    run("sh", "-c", command.replace("<casfs>", str(REPO)), env=env)
    mount = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "casfs"), "mount", str(tmp_path / "mnt")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert mount.returncode == 2, mount.stderr
    assert len(mount.stderr.strip().splitlines()) == 1 and "pyfuse3" in mount.stderr
