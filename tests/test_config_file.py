"""The config file of named remotes, as a user writes it: casfs mount NAME [MOUNTPOINT],
--remote NAME for put/get/stat, flags over the file, and errors that name file and key."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO, CasfsServer


def casfs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "casfs", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose $XDG_CONFIG_HOME is empty, so casfs reads only what a test
    writes to ``<tmp>/config/casfs/config.toml``."""
    (tmp_path / "config" / "casfs").mkdir(parents=True)
    return {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}


def _write(home: dict[str, str], text: str) -> Path:
    path = Path(home["XDG_CONFIG_HOME"]) / "casfs" / "config.toml"
    path.write_text(text)
    return path


def test_put_stat_get_with_a_named_remote(
    server: CasfsServer, tmp_path: Path, home: dict[str, str]
) -> None:
    _write(home, f'[remotes.lab]\nendpoint = "{server.endpoint}"\ninstance = ""\n')
    (tmp_path / "file").write_bytes(b"named")
    put = casfs("put", "--remote", "lab", str(tmp_path / "file"), env=home)
    assert put.returncode == 0, put.stderr
    digest = put.stdout.strip()
    # the remote's instance, '', and 'main' share one store on the test server
    assert casfs("stat", "--remote", server.endpoint, digest, env=home).returncode == 0
    got = casfs("get", "--remote", "lab", digest, env=home)
    assert got.stdout == "named"
    assert casfs("stat", "--remote", "lab", "--instance", "other", digest, env=home).returncode == 1
    # A remote with no endpoint is an embedded store, as for casfs mount.
    store = tmp_path / "local-store"
    _write(home, f'[remotes.local]\nstore = "{store}"\n')
    assert casfs("stat", "--remote", "local", digest, env=home).returncode == 1
    assert casfs("put", "--remote", "local", str(tmp_path / "file"), env=home).stdout == put.stdout
    assert casfs("stat", "--store", str(store), digest, env=home).returncode == 0
    assert (store / "cas" / "sha256" / digest[:2] / digest.partition("/")[0]).read_text() == "named"


def test_mount_a_named_remote_at_its_mountpoint_flags_override(
    tmp_path: Path, home: dict[str, str]
) -> None:
    with CasfsServer(tmp_path / "store", "--instance", "main", "--instance", "ci/linux") as server:
        _mount_a_named_remote(server, tmp_path, home)


def _mount_a_named_remote(server: CasfsServer, tmp_path: Path, home: dict[str, str]) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "mount.log"
    _write(
        home,
        f'[remotes.lab]\nendpoint = "{server.endpoint}"\ninstances = ["main", "ci/linux"]\n'
        f'read_only = true\ncache_size = "64M"\nmountpoint = "../../mnt"\n'
        f'cache_dir = "{tmp_path / "cache"}"\nheaders = {{ "x-team" = "build" }}\n'
        f'log_file = "{log}"\n',
    )
    # 'lab' has no '/': the remote, at its mountpoint (relative to the file, not to the
    # working directory); --no-read-only beats the file
    mounted = casfs("mount", "lab", "--no-read-only", "--daemon", env=home)
    try:
        assert mounted.returncode == 0, mounted.stderr + log.read_text()
        assert sorted(os.listdir(mountpoint)) == ["ci", "main"]  # the file's instances
        (mountpoint / "main" / "uploads" / "new").write_bytes(b"writable")
        digest = os.getxattr(mountpoint / "main" / "uploads" / "new", "user.casfs.digest")
        assert (mountpoint / "main" / "blobs" / digest.decode()).read_bytes() == b"writable"
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)


def test_mount_name_and_mountpoint_and_the_one_argument_forms(
    server: CasfsServer, tmp_path: Path, home: dict[str, str]
) -> None:
    config = _write(home, f'[remotes.lab]\nendpoint = "{server.endpoint}"\nread_only = true\n')
    no_mountpoint = casfs("mount", "lab", env=home)
    assert no_mountpoint.returncode == 2
    assert f"{config}: [remotes.'lab'] names no 'mountpoint'" in no_mountpoint.stderr
    unknown = casfs("mount", "nosuch", str(tmp_path), env=home)
    assert unknown.returncode == 2 and "no [remotes.'nosuch'] (known: ['lab'])" in unknown.stderr
    log = tmp_path / "mount.log"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounted = casfs(
        "mount", "lab", str(mountpoint), "--daemon", "--log-file", str(log),
        "--cache-dir", str(tmp_path / "cache"), env=home,
    )  # fmt: skip
    try:
        assert mounted.returncode == 0, mounted.stderr + log.read_text()
        touch = subprocess.run(["touch", str(mountpoint / "main" / "uploads" / "x")])
        assert touch.returncode != 0  # read_only from the file
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)


def test_the_tree_limits_of_a_named_remote_reach_the_mount(
    server: CasfsServer, tmp_path: Path, home: dict[str, str]
) -> None:
    """``tree_max_entries`` (and the other tree keys) in the file are the mount's limits:
    a Directory of three entries is EIO under a limit of two, one of two is shown."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "mount.log"
    _write(
        home,
        f'[remotes.lab]\nendpoint = "{server.endpoint}"\ntree_max_entries = 2\n'
        f'tree_max_depth = 4\ntree_cache_size = "2M"\nmountpoint = "{mountpoint}"\n'
        f'cache_dir = "{tmp_path / "cache"}"\nlog_file = "{log}"\n',
    )
    mounted = casfs("mount", "lab", "--daemon", env=home)
    try:
        assert mounted.returncode == 0, mounted.stderr + log.read_text()
        uploads = mountpoint / "main" / "uploads"
        for name, count in (("big", 3), ("small", 2)):
            (uploads / name).mkdir()
            for i in range(count):
                (uploads / name / f"f{i}").write_bytes(f"{name} {i}\n".encode())
        trees = mountpoint / "main" / "trees"
        small = os.getxattr(uploads / "small", "user.casfs.digest").decode()
        assert sorted(os.listdir(trees / small)) == ["f0", "f1"]
        big = os.getxattr(uploads / "big", "user.casfs.digest").decode()
        with pytest.raises(OSError) as raised:
            os.listdir(trees / big)
        assert raised.value.errno == errno.EIO
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('[remotes.lab]\nendpoint = "grpc://h:1"\ncolour = "red"\n', "unknown key 'colour'"),
        ("[remotes.lab]\ncache_size = true\n", "'cache_size' must be a size"),
        ('[remotes.lab]\ncache_size = "lots"\n', "'cache_size': not a size: 'lots'"),
        ('[remotes.lab]\nblock_size = "3K"\n', "'block_size' must be a power of two"),
        ('[remotes.lab]\nread_only = "yes"\n', "'read_only' must be true or false"),
        ('[remotes.lab]\nendpoint = "ftp://h"\n', "'endpoint': unsupported endpoint"),
        ('[remotes.lab]\ninstances = "main"\n', "'instances' must be a list of strings"),
        ('[remotes.lab]\ninstances = ["blobs"]\n', "'instances': reserved word 'blobs'"),
        ("[remotes.lab]\nretries = 0\n", "'retries' must be a whole number >= 1"),
        ("[remotes.lab]\ntree_max_depth = 0\n", "'tree_max_depth' must be a whole number >= 1"),
        ('[remotes.lab]\ntree_max_entries = "9"\n', "'tree_max_entries' must be a whole number"),
        ('[remotes.lab]\ntree_cache_size = "512K"\n', "'tree_cache_size' must be at least 1M"),
        ("[remotes.lab]\nheaders = { a = 1 }\n", "'headers' must be a table of strings"),
        ('[remotes.lab]\nmetrics = "any:port"\n', "'metrics': --metrics needs [HOST:]PORT"),
        ('[remotes.lab]\nendpoint = "grpc://h:1"\nstore = "s"\n', "not both"),
        ("[remote.lab]\n", "unknown key 'remote'"),
        ("[remotes.lab\n", "Expected ']'"),
    ],
)
def test_a_bad_config_file_names_the_file_and_key(
    tmp_path: Path, home: dict[str, str], text: str, complaint: str
) -> None:
    config = _write(home, text)
    result = casfs("mount", "lab", str(tmp_path), env=home)
    assert result.returncode == 2
    assert result.stderr.startswith(f"casfs: {config}") and complaint in result.stderr
    assert "Traceback" not in result.stderr


def test_the_config_option_wins_and_must_exist(tmp_path: Path, home: dict[str, str]) -> None:
    explicit = tmp_path / "other.toml"
    explicit.write_text("[remotes.lab]\nbogus = 1\n")
    _write(home, "[remotes.lab]\n")  # valid, but --config wins
    result = casfs("stat", "--config", str(explicit), "--remote", "lab", "0" * 64 + "/1", env=home)
    assert result.returncode == 2 and str(explicit) in result.stderr
    absent = str(tmp_path / "none.toml")
    missing = casfs("stat", "--config", absent, "--remote", "lab", "0" * 64 + "/1", env=home)
    assert missing.returncode == 2 and "none.toml: no such config file" in missing.stderr
