"""XLA programs persisted across processes (JAX's compilation cache).

Every flow run, training retry, gate and robot process is a fresh process that would otherwise compile
the same update and acting programs again (seconds to tens of seconds each on CPU). With the cache the
first process compiles and the rest load. Entries are keyed by program, JAX version and device, so a
code change only adds entries; the directory is safe to delete at any time.
"""

from __future__ import annotations

from pathlib import Path

import jax

_ACTIVE: list[str] = []


def use_compilation_cache(directory: str | Path) -> None:
    """Read and write compiled programs under ``directory`` from now on (empty or ``off``: no cache).
    The first directory a process names is the one it keeps."""
    directory = str(directory)
    if _ACTIVE or not directory or directory == "off":
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    # Also the many small programs of eager initialisation: together they cost seconds per process.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    _ACTIVE.append(directory)
