"""Cluster addresses: ``host:port`` strings, one per process, the same list in every process."""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Sequence
from pathlib import Path


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``; ValueError saying what is wrong.

    >>> split_address("df-0.df.default.svc.cluster.local:2101")
    ('df-0.df.default.svc.cluster.local', 2101)
    """
    if not isinstance(address, str):
        raise TypeError(f"a cluster address must be a 'host:port' str, got {address!r}")
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ValueError(f"cluster address {address!r} is not of the form host:port")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"cluster address {address!r} has a non-numeric port") from None
    if not 0 < port < 65536:
        raise ValueError(f"cluster address {address!r} has a port outside 1..65535")
    return host, port


def check_addresses(addresses: Sequence[str]) -> list[tuple[str, int]]:
    parsed = [split_address(address) for address in addresses]
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"cluster addresses must be distinct, got {list(addresses)!r}")
    return parsed


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_endpoint(host: str, port: int) -> str:
    """What this process binds: loopback stays on loopback; a name (a pod's DNS name, which may
    not resolve yet when the pod starts) binds every interface."""
    if _is_loopback(host):
        return f"tcp://{'127.0.0.1' if host == 'localhost' else host}:{port}"
    return f"tcp://*:{port}"


def connect_endpoint(host: str, port: int) -> str:
    if ":" in host:
        return f"tcp://[{host}]:{port}"
    return f"tcp://{host}:{port}"


def _ephemeral_range() -> tuple[int, int]:
    """The ports this machine gives outgoing connections (Linux's default when unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago, for tests and benchmarks that start
    ``cluster_main`` processes by hand. Another program may take one before it is bound, which
    is why :func:`~millrace.execution.spawn_cluster` has each process bind first instead.

    They are taken below the range of ports the system gives outgoing connections: the
    connections of clusters already running (other tests) take ports from that range at any
    moment, and one of them could take a port picked there before its process binds it.
    """
    low, _ = _ephemeral_range()
    below = range(max(1024, low - 16384), low)
    candidates = random.sample(below, min(count * 64, len(below)))
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
            if len(sockets) == count:
                return [sock.getsockname()[1] for sock in sockets]
        raise OSError(f"no {count} free ports found below port {low} on {host}")
    finally:
        for sock in sockets:
            sock.close()
