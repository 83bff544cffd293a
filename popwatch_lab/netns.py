"""Network namespaces and TUN devices: the plumbing under the lab (Linux, root).

``setns`` moves only the calling thread, so a thread can step into a namespace, open a
socket or a TUN device there, and step back; the file descriptor keeps its namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


class IpError(RuntimeError):
    """An ``ip`` (or ``tc``) command failed; the message is its own."""


def run(*argv: str, check: bool = True) -> str:
    """Run a command; its standard output, or :class:`IpError` with its standard error."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise IpError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """``ip [-n NETNS] ARGS``."""
    return run("ip", *(("-n", netns) if netns else ()), *args, check=check)


def exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def listed() -> set[str]:
    """The names ``ip netns list`` shows."""
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def pids(netns: str) -> list[int]:
    """Every process living in ``netns`` (``ip netns pids``)."""
    if not exists(netns):
        return []
    return [int(p) for p in ip("netns", "pids", netns, check=False).split()]


def setns(path: str | os.PathLike[str]) -> None:
    """Move this thread into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """This thread in ``netns`` for the block, then back where it was."""
    home = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    back = os.open(home, os.O_RDONLY)
    try:
        setns(NETNS_DIR / netns)
        try:
            yield
        finally:
            setns(f"/proc/self/fd/{back}")
    finally:
        os.close(back)


def open_tun(name: str, netns: str | None = None) -> int:
    """Attach to the existing (persistent) TUN device ``name``, non-blocking."""
    with inside(netns) if netns else contextlib.nullcontext():
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
    return fd


def sysctl(netns: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl by writing /proc/sys from inside the namespace."""
    with inside(netns):
        Path("/proc/sys", *key.split(".")).write_text(value)
