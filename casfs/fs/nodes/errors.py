"""``NodeError``: how a node refuses a request, with the errno the caller should see."""

from __future__ import annotations

import errno

NO_ATTRIBUTE = errno.ENODATA  # pyfuse3.ENOATTR on Linux


class NodeError(Exception):
    """A node's answer that is an errno: ENOENT for a name that is not there, EROFS for a
    change to a read-only place, ... An answer, not a failure: it is not logged."""

    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode.get(code, str(code)))
        self.errno = code
