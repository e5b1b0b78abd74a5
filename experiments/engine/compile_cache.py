"""JAX's persistent compilation cache for command-line runs: a second run of a program compiles from disk.

On by default for ``rlhf-bandits run`` in a per-user directory (``$XDG_CACHE_HOME/rlhf-bandits/jax``,
else ``~/.cache/rlhf-bandits/jax``); the environment variable ``RLHF_BANDITS_COMPILATION_CACHE`` names
another directory, or turns the cache off with ``0`` / ``off`` / ``false`` (benchmarks run with it off,
so they measure compilation). A cached executable is the same program, so results do not change.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "RLHF_BANDITS_COMPILATION_CACHE"
OFF = {"0", "off", "false", "no", ""}
# Programs that compile faster than this are not worth a disk entry.
MIN_COMPILE_SECONDS = 0.5


def cache_dir() -> Path | None:
    """The cache directory this process would use, or ``None`` when the user turned the cache off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rlhf-bandits" / "jax"


def enable() -> Path | None:
    """Point JAX's persistent compilation cache at ``cache_dir()`` (created if needed); returns it, or
    ``None`` when the cache is off or the directory cannot be created (the run then compiles as usual)."""
    import jax

    path = cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path
