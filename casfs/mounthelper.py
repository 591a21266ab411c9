"""``mount.casfs``: the helper mount(8) runs for ``mount -t casfs`` and /etc/fstab lines.

mount(8) calls ``mount.casfs SOURCE TARGET [-sfnv] [-N NS] -o OPTIONS``. SOURCE is an
endpoint (``grpc://host:port``, ``grpcs://...``, ``unix:/path``) or the name of a remote
in the config file (``NAME`` or ``casfs#NAME``). The helper turns the options into
``casfs mount --daemon`` flags and returns once the mount answers, or exits non-zero with
the reason. Options that only mount(8) or systemd read (``_netdev``, ``noauto``,
``x-systemd.*``, ...) are dropped; options it does not know go to FUSE as ``-o``.
"""

from __future__ import annotations

import getopt
import sys
from collections.abc import Sequence

from casfs import cli

USAGE = "usage: mount.casfs SOURCE MOUNTPOINT [-sfnv] [-o option[,option...]]"

# mount(8), fstab and systemd options that mean nothing to casfs.
IGNORED = {"_netdev", "noauto", "auto", "nofail", "user", "nouser", "users", "owner", "group"}
IGNORED |= {"defaults", "rw"}
IGNORED_PREFIXES = ("x-", "comment=")  # x-systemd.*, x-gvfs-*: userspace-only by convention

# option -> casfs mount flag that takes its value
VALUE_OPTIONS = {
    "instance": "--instance",
    "config": "--config",
    "store": "--store",
    "asset_catalog": "--asset-catalog",
    "cache_size": "--cache-size",
    "block_size": "--block-size",
    "readahead": "--readahead",
    "cache_dir": "--cache-dir",
    "disk_cache": "--disk-cache",
    "disk_cache_size": "--disk-cache-size",
    "tree_max_entries": "--tree-max-entries",
    "tree_max_depth": "--tree-max-depth",
    "tree_cache_size": "--tree-cache-size",
    "ca_file": "--ca-file",
    "client_cert": "--client-cert",
    "client_key": "--client-key",
    "token_file": "--token-file",
    "header": "--header",
    "retries": "--retries",
    "log_file": "--log-file",
    "metrics": "--metrics",
}
FLAG_OPTIONS = {"ro": "--read-only", "read_only": "--read-only", "allow_other": "--allow-other"}
FLAG_OPTIONS["no_check_remote"] = "--no-check-remote"
FLAG_OPTIONS["no_disk_cache"] = "--no-disk-cache"


class UsageError(ValueError):
    """The command line mount(8) gave cannot be translated."""


def _is_endpoint(source: str) -> bool:
    return "://" in source or source.startswith("unix:")


def translate(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``mount.casfs`` arguments -> (``casfs`` arguments, whether to really mount).

    The second is False for ``-f`` (mount(8)'s "fake": check, do not mount).
    """
    try:
        opts, positional = getopt.gnu_getopt(list(argv), "sfnvo:t:N:")
    except getopt.GetoptError as error:
        raise UsageError(str(error)) from None
    if len(positional) != 2:
        raise UsageError(USAGE)
    source, target = positional
    command = ["mount"]
    fuse: list[str] = []
    fake = False
    verbose = False
    for flag, value in opts:
        if flag == "-o":
            for option in filter(None, value.split(",")):
                key, sep, argument = option.partition("=")
                key = key.replace("-", "_")
                if option in IGNORED or option.startswith(IGNORED_PREFIXES):
                    continue
                if key in VALUE_OPTIONS:
                    if not sep:
                        raise UsageError(f"option {key!r} needs a value: {key}=...")
                    command += [VALUE_OPTIONS[key], argument]
                elif key in FLAG_OPTIONS and not sep:
                    command.append(FLAG_OPTIONS[key])
                else:
                    fuse.append(option)
        elif flag == "-f":
            fake = True
        elif flag == "-v":
            verbose = True
        # -s (sloppy), -n (no mtab), -N, -t: nothing to do
    if _is_endpoint(source):
        command += ["--remote", source, str(target)]
    else:
        command += [source.removeprefix("casfs#"), str(target)]
    fuse.append(f"fsname={source}")  # what findmnt and df show: the fstab line's source
    command += ["-o", ",".join(fuse), "--daemon"]
    return (["-v", *command] if verbose else command), not fake


def main(argv: Sequence[str] | None = None) -> int:
    """Run as mount(8) does: exit 0 once mounted; else a message and a non-zero status."""
    try:
        command, really = translate(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"mount.casfs: {error}", file=sys.stderr)
        return 2
    if not really:
        return 0
    return cli.main(command)


if __name__ == "__main__":
    sys.exit(main())
