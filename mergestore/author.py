"""The default author of a commit: $MERGESTORE_AUTHOR, else user@host."""

from __future__ import annotations

import getpass
import os


def default_author() -> str:
    """$MERGESTORE_AUTHOR, else user@host. The host name is uname's node name (what
    gethostname returns on Linux and macOS), so a merge does not import socket for it."""
    env = os.environ.get("MERGESTORE_AUTHOR")
    if env:
        return env
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{_host()}"


def _host() -> str:
    uname = getattr(os, "uname", None)
    if uname is not None:
        return uname().nodename
    import socket  # Windows

    return socket.gethostname()
