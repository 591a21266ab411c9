"""The ``casfs`` command: mount a CAS, serve the embedded one, put/get/stat blobs, name
them (asset, find), and show a running mount's status.

Exit codes (also in ``--help``): 0 success; 1 an operation failed (a missing blob, a server
or network error, an unreadable file, a mount that could not start, not a casfs mount);
2 bad usage or configuration.

The parser is ``casfs.cli.parser`` (its table of command groups is where a new command
registers); each group is a module of its own (``serve``, ``mount``, ``blobs``,
``status``, ``assets``); ``casfs.cli.main`` runs the chosen command and maps its errors
to the exit status.
"""

from casfs.cli.main import main
from casfs.cli.parser import build_parser
from casfs.cli.serve import serve_config as _serve_config  # tests/test_security.py

__all__ = ["_serve_config", "build_parser", "main"]
