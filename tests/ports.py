"""A free TCP port on 127.0.0.1 (for gloo process groups, moto and Ray heads started by the tests)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS reports free now (bound and released, so another process may still take it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
