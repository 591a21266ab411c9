"""Errors of the mount process itself (not of CAS calls, which are ``casfs.cas.errors``)."""


class MountError(RuntimeError):
    """The file system could not be mounted (a bad mountpoint, no embedded server, ...)."""
