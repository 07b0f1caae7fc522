"""Resident memory that follows what a process holds, not the most it ever held."""

from __future__ import annotations


def trim_heap() -> None:
    """Hand freed C-heap memory back to the OS (glibc ``malloc_trim``; elsewhere a no-op). Closed
    simulators (~190 MB each) and XLA compilations (hundreds of MB while compiling) free their memory
    to the heap, where it would otherwise stay resident for the life of the process."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
