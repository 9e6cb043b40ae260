"""Free TCP ports on this host, for brokers, agents and sidecars started by tests, the demo and benches."""

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
