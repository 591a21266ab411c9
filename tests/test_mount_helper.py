"""``mount -t casfs`` and /etc/fstab lines, through the real mount(8) and umount(8)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casfs.mounthelper import UsageError, translate
from tests.mounts import is_mounted
from tests.servers import REPO, CasfsServer

HELPER = Path("/sbin/mount.casfs")


@pytest.fixture
def helper() -> Iterator[Path]:
    """This checkout's ``mount.casfs`` as /sbin/mount.casfs for the test, removed after."""
    if os.geteuid() != 0:
        pytest.skip("installing /sbin/mount.casfs needs root")
    ours = Path(sys.executable).parent / "mount.casfs"
    assert ours.exists(), "the mount.casfs entry point is not installed in the venv"
    if HELPER.is_symlink() and HELPER.readlink() == ours:
        HELPER.unlink()  # left by a test run that was killed
    if HELPER.exists() or HELPER.is_symlink():
        pytest.skip(f"{HELPER} is installed already (make install?); not replacing it")
    HELPER.symlink_to(ours)
    try:
        yield HELPER
    finally:
        HELPER.unlink(missing_ok=True)


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """A mountpoint that is never left mounted, whatever the test did."""
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        yield path
    finally:
        if is_mounted(path):
            subprocess.run(["fusermount3", "-uz", str(path)], check=False)


def _put(server: CasfsServer, tmp_path: Path, data: bytes) -> str:
    (tmp_path / "blob").write_bytes(data)
    command = [sys.executable, "-m", "casfs", "put", "--remote", server.endpoint]
    result = subprocess.run(
        [*command, str(tmp_path / "blob")], capture_output=True, cwd=REPO, check=True
    )
    return result.stdout.decode().strip()


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=60)


def _wait_for(text: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"no {text!r} in {log}"
        time.sleep(0.05)


def test_mount_t_casfs_then_cat_and_umount(
    helper: Path, server: CasfsServer, tmp_path: Path, mountpoint: Path
) -> None:
    data = os.urandom(300_000)
    digest = _put(server, tmp_path, data)
    log = tmp_path / "mount.log"
    options = ["instance=main", "cache_size=64M", "ro", "_netdev", "noauto", "nofail"]
    options += ["x-systemd.requires=network-online.target", "comment=casfs", "noatime"]
    options += [f"cache_dir={tmp_path / 'cache'}", f"log_file={log}"]
    mounted = _run("mount", "-t", "casfs", server.endpoint, mountpoint, "-o", ",".join(options))
    assert mounted.returncode == 0, mounted.stderr + log.read_text()
    assert is_mounted(mountpoint)  # mount(8) returned once the mount was up
    cat = subprocess.run(["cat", str(mountpoint / "main" / "blobs" / digest)], capture_output=True)
    assert cat.returncode == 0 and cat.stdout == data
    touch = _run("touch", mountpoint / "main" / "uploads" / "new")
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr
    listed = _run("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", mountpoint).stdout.split()
    assert listed[:2] == [server.endpoint, "fuse.casfs"]
    assert "noatime" in listed[2].split(",")  # an unknown option went to FUSE
    unmounted = _run("umount", mountpoint)
    assert unmounted.returncode == 0, unmounted.stderr
    _wait_for("unmounted", log)  # the mount process saw it and ended cleanly
    assert not is_mounted(mountpoint)


def test_an_fstab_line_with_a_named_remote(
    helper: Path, server: CasfsServer, tmp_path: Path, mountpoint: Path
) -> None:
    data = b"from fstab\n"
    digest = _put(server, tmp_path, data)
    log = tmp_path / "mount.log"
    config = tmp_path / "casfs.toml"
    config.write_text(
        f'[remotes.lab]\nendpoint = "{server.endpoint}"\ninstances = ["main"]\n'
        f'cache_dir = "{tmp_path / "cache"}"\nlog_file = "{log}"\n'
    )
    fstab = tmp_path / "fstab"  # mount --fstab reads it as it reads /etc/fstab
    fstab.write_text(
        f"# a comment\ncasfs#lab {mountpoint} casfs "
        f"_netdev,noauto,config={config},cache_size=64M 0 0\n"
    )
    mounted = _run("mount", "--fstab", fstab, mountpoint)
    assert mounted.returncode == 0, mounted.stderr + (log.read_text() if log.exists() else "")
    assert (mountpoint / "main" / "blobs" / digest).read_bytes() == data
    assert _run("findmnt", "-n", "-o", "SOURCE", mountpoint).stdout.strip() == "casfs#lab"
    assert _run("umount", mountpoint).returncode == 0
    _wait_for("unmounted", log)


def test_a_mount_that_cannot_work_fails_with_a_message(helper: Path, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    config = tmp_path / "casfs.toml"
    config.write_text('[remotes.lab]\nendpoint = "grpc://127.0.0.1:1"\n')
    for source, options, message in [
        ("nosuch", f"config={config}", "no [remotes.'nosuch']"),
        ("grpc://127.0.0.1:1", "cache_size=lots", "not a size: 'lots'"),
        ("grpc://127.0.0.1:1", "instance", "'instance' needs a value"),
    ]:
        result = _run("mount", "-t", "casfs", source, mountpoint, "-o", options)
        assert result.returncode != 0
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not is_mounted(mountpoint)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (
            ["grpc://h:1", "/m", "-o", "rw,instance=a,instance=b/c,ro,noauto,x-systemd.after=x"],
            ["mount", "--instance", "a", "--instance", "b/c", "--read-only", "--remote",
             "grpc://h:1", "/m", "-o", "fsname=grpc://h:1", "--daemon"],
        ),
        (
            ["casfs#lab", "/m", "-n", "-o", "allow_other,cache-size=1G,nosuid,_netdev"],
            ["mount", "--allow-other", "--cache-size", "1G", "lab", "/m", "-o",
             "nosuid,fsname=casfs#lab", "--daemon"],
        ),
        (
            ["lab", "/m", "-v", "-o", "header=x-a=b=c,token_file=/t,defaults,comment=x"],
            ["-v", "mount", "--header", "x-a=b=c", "--token-file", "/t", "lab", "/m",
             "-o", "fsname=lab", "--daemon"],
        ),
    ],
)
def test_options_become_casfs_mount_flags(argv: list[str], command: list[str]) -> None:
    assert translate(argv) == (command, True)


def test_fake_mount_and_bad_command_lines() -> None:
    assert translate(["lab", "/m", "-f"])[1] is False  # mount -f: check only
    for argv in (["lab"], ["lab", "/m", "-x"], ["lab", "/m", "-o", "cache_size"]):
        with pytest.raises(UsageError):
            translate(argv)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_dead_remote_fails_the_mount_unless_told_it_comes_later(
    helper: Path, tmp_path: Path, mountpoint: Path
) -> None:
    endpoint = f"grpc://127.0.0.1:{_free_port()}"  # nothing listens there (yet)
    log = tmp_path / "mount.log"
    options = f"cache_dir={tmp_path / 'cache'},log_file={log}"
    refused = _run("mount", "-t", "casfs", endpoint, mountpoint, "-o", options)
    assert refused.returncode != 0
    assert f"cannot reach {endpoint}" in refused.stderr, refused.stderr
    assert "Connection refused" in refused.stderr and "no_check_remote" in refused.stderr
    assert not is_mounted(mountpoint)
    later = _run("mount", "-t", "casfs", endpoint, mountpoint, "-o", f"no_check_remote,{options}")
    assert later.returncode == 0, later.stderr + log.read_text()
    try:
        with CasfsServer(tmp_path / "store", listen=endpoint.removeprefix("grpc://")) as server:
            digest = _put(server, tmp_path, b"came up later\n")
            blob = mountpoint / "main" / "blobs" / digest
            deadline = time.monotonic() + 30  # the channel reconnects within its backoff
            while subprocess.run(["cat", str(blob)], capture_output=True).returncode != 0:
                assert time.monotonic() < deadline, "the mount never reached the server"
                time.sleep(0.2)
            assert blob.read_bytes() == b"came up later\n"
    finally:
        assert _run("umount", mountpoint).returncode == 0
    _wait_for("unmounted", log)


def test_a_second_mount_and_a_bad_option_say_what_is_wrong(
    helper: Path, server: CasfsServer, tmp_path: Path, mountpoint: Path
) -> None:
    log = tmp_path / "mount.log"
    options = f"cache_dir={tmp_path / 'cache'},log_file={log}"
    bad = _run("mount", "-t", "casfs", server.endpoint, mountpoint, "-o", f"bogus_opt,{options}")
    assert bad.returncode != 0 and "unknown option(s): -o bogus_opt" in bad.stderr, bad.stderr
    assert not is_mounted(mountpoint)
    first = _run("mount", "-t", "casfs", server.endpoint, mountpoint, "-o", options)
    assert first.returncode == 0, first.stderr
    try:
        pid = json.loads(os.getxattr(mountpoint, "user.casfs.status"))["pid"]
        options = f"cache_dir={tmp_path / 'other-cache'},log_file={log}"
        second = _run("mount", "-t", "casfs", server.endpoint, mountpoint, "-o", options)
        assert second.returncode != 0
        assert f"mounted already, by casfs (pid {pid}" in second.stderr, second.stderr
        assert f"fusermount3 -u {mountpoint}" in second.stderr
    finally:
        assert _run("umount", mountpoint).returncode == 0
    _wait_for("unmounted", log)
