"""Reaching a Ray cluster: a fast reachability check before ``ray.init``."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from urllib.parse import urlparse

from rayzor.errors import ConfigError

__all__ = ["check_address", "check_dashboard"]

#: Seconds to wait for a TCP connect: ``ray.init`` itself can hang for minutes.
CONNECT_TIMEOUT_S = 3.0
_VALID_ADDRESS = "HOST:PORT of a running Ray head's GCS (default port 6379), ray://HOST:10001, or auto"
_VALID_DASHBOARD = "http://HOST:8265, the dashboard of a running Ray head"
_DEFAULT_PORTS = {"": 6379, "ray": 10001}


def _host_port(address: str) -> tuple[str, int] | None:
    parsed = urlparse(address if "://" in address else f"//{address}")
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.hostname:
        return None
    try:
        return parsed.hostname, parsed.port or _DEFAULT_PORTS[parsed.scheme]
    except ValueError:
        return None


def check_address(address: str, flag: str = "--address") -> None:
    """Fail within seconds if nothing listens at a Ray cluster address.

    Args:
        address: ``HOST:PORT``, ``ray://HOST:PORT`` or ``auto`` (not checked:
            Ray finds the local head itself).
        flag: Name of the option the address came from, for the message.

    Raises:
        ConfigError: malformed address, or no TCP connect within
            :data:`CONNECT_TIMEOUT_S`.
    """
    if address in ("auto", "local"):
        return
    target = _host_port(address)
    if target is None:
        raise ConfigError(flag, address, _VALID_ADDRESS)
    try:
        with socket.create_connection(target, timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            flag, address, f"{_VALID_ADDRESS} (connect to {target[0]}:{target[1]} failed: {exc})"
        ) from None


def check_dashboard(address: str, flag: str = "--address") -> str:
    """Check that a Ray dashboard answers at ``address``; return it normalised.

    Raises:
        ConfigError: not an http(s) URL, or ``/api/version`` does not answer
            within :data:`CONNECT_TIMEOUT_S`.
    """
    if "://" not in address:
        address = f"http://{address}"
    if urlparse(address).scheme not in ("http", "https"):
        raise ConfigError(flag, address, _VALID_DASHBOARD)
    address = address.rstrip("/")
    try:
        with urllib.request.urlopen(f"{address}/api/version", timeout=CONNECT_TIMEOUT_S) as response:
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(
            flag, address, f"{_VALID_DASHBOARD} (GET /api/version failed: {getattr(exc, 'reason', exc)})"
        ) from None
    return address
