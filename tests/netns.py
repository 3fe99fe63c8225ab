"""Helpers for tests that build hosts out of network namespaces without dockerd."""

from __future__ import annotations

import ctypes
import os
import subprocess

CLONE_NEWNET = 0x40000000


def run(args: list[str], stdin: str | None = None) -> str:
    """Run a command; its stdout, or RuntimeError with its stderr."""
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def enter(netns: str) -> None:
    """Thread initializer: move this worker thread (only it) into a network namespace.

    setns(2) moves the calling thread alone, and sockets keep the namespace they were made in.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)
