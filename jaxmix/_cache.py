"""JAX's persistent compilation cache, on by default in a per-user directory.

A fit compiles one XLA program per shape, which takes seconds, while a small fit
itself takes milliseconds. JAX can keep compiled programs on disk, so that a
second process (a script run again, a worker of a cross-validation, the next
notebook kernel) loads them instead of compiling again. Importing jaxmix turns
that cache on, unless

- ``JAXMIX_COMPILATION_CACHE`` is ``0``, ``off``, ``false`` or ``no``, which leaves
  JAX's settings alone (the cache stays off unless configured otherwise);
- ``JAXMIX_COMPILATION_CACHE`` is a directory, which is used instead;
- the cache directory is already set (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)``): the user's choice
  stands.

The default directory is ``$XDG_CACHE_HOME/jaxmix/xla`` (``~/.cache/jaxmix/xla``).
JAX keys each entry on the program, the JAX and XLA versions, the device and
the compile options, so a stale entry is never used; deleting the directory is
always safe. Programs that compile in 0.1 s or more are stored (JAX's own
default is 1 s, which leaves out the many small programs of a fit's set-up;
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` or
``jax_persistent_cache_min_compile_time_secs`` set by the user stands).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "JAXMIX_COMPILATION_CACHE"
_OFF = {"0", "off", "false", "no"}
#: Programs compiling at least this long are stored.
MIN_COMPILE_SECONDS = 0.1
_JAX_DEFAULT_MIN_COMPILE_SECONDS = 1.0


def default_directory() -> Path:
    """The per-user cache directory used when nothing else is configured."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "jaxmix" / "xla"


def configure() -> Path | None:
    """Turn the persistent cache on as described above; returns its directory.

    Returns None when it is left off, or when the directory cannot be created
    (a read-only home, say): jaxmix then compiles as JAX does by default.
    """
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in _OFF:
        return None
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    directory = Path(setting).expanduser() if setting else default_directory()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(directory, os.W_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    threshold = "jax_persistent_cache_min_compile_time_secs"
    if (
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ
        and getattr(jax.config, threshold) == _JAX_DEFAULT_MIN_COMPILE_SECONDS
    ):
        jax.config.update(threshold, MIN_COMPILE_SECONDS)
    return directory
