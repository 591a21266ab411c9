"""Tell a service manager (systemd's ``Type=notify``) how a casfs process is doing.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket). Without ``$NOTIFY_SOCKET``
every call is a no-op, so casfs behaves the same outside systemd.

A message that cannot be sent is logged and dropped: the service manager then times the
unit out, which says more than a casfs that dies because its supervisor went away.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("casfs")
ENVIRONMENT = "NOTIFY_SOCKET"


def notify(*lines: str) -> bool:
    """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) as one message; True if sent."""
    address = os.environ.get(ENVIRONMENT, "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("%s=%r: only unix socket paths are supported", ENVIRONMENT, address)
        return False
    message = "\n".join(line.replace("\n", " ") for line in lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as error:
        log.warning("could not notify the service manager at %s: %s", address, error)
        return False
    return True


def ready(status: str) -> bool:
    """The service is up. ``MAINPID`` lets a ``--daemon`` child take over from its parent
    (the unit then needs ``NotifyAccess=all``); in the foreground it is the main PID."""
    return notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def stopping(status: str) -> bool:
    """The service has begun to stop."""
    return notify("STOPPING=1", f"STATUS={status}")


def status(text: str) -> bool:
    """A one-line status that ``systemctl status`` shows."""
    return notify(f"STATUS={text}")


def without_notify_socket(environment: dict[str, str]) -> dict[str, str]:
    """A copy of ``environment`` for a child that must not speak for this service."""
    return {key: value for key, value in environment.items() if key != ENVIRONMENT}
