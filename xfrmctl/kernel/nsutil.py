"""Run code and open sockets inside a named network namespace (/run/netns/NAME).

setns(CLONE_NEWNET) only moves the calling thread, so each call runs on a fresh
thread that joins the namespace and then ends; sockets opened there stay bound to
that namespace for their whole life, whichever thread uses them afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def netns_path(name: str) -> str:
    return name if name.startswith("/") else os.path.join(NETNS_RUN_DIR, name)


def setns(name: str) -> None:
    """Move the calling thread into namespace `name`."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(name: str | None, fn: Callable[[], T]) -> T:
    """Run `fn()` inside namespace `name` (None: here) and return its result."""
    if name is None:
        return fn()
    box: dict[str, T] = {}
    error: list[BaseException] = []

    def target() -> None:
        try:
            setns(name)
            box["value"] = fn()
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return box["value"]


def open_socket(name: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket living in namespace `name`."""
    return call_in_netns(name, lambda: socket.socket(family, kind, proto))
