"""A free TCP port on 127.0.0.1 (for gloo process groups, moto and Ray heads started by the tests)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS reports free now (bound and released, so another process may still take it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Per-test timeout of the few tests that take minutes (the learning checks, the demo, the multi-node and
#: `ray job submit` runs: 100-260 s on 2 cores): at least 4x their time, so a machine twice as slow still
#: passes them; every other test keeps pyproject's 600 s.
LONG_TEST_TIMEOUT_S = 1200
