"""The persistent compilation cache that importing jaxmix turns on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# A fresh process: imports jaxmix, fits a small mixture (if given "fit"), prints
# the cache directory JAX uses and how many compiled programs it loaded from disk.
_SCRIPT = r"""
import json, sys, jax
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kwargs: hits.append(name)
    if name == "/jax/compilation_cache/cache_hits" else None
)
import jaxmix, numpy as np
if sys.argv[1:] == ["fit"]:
    X = np.random.default_rng(0).normal(size=(60, 2))
    jaxmix.GaussianMixture(2, max_iter=5, random_state=0).fit(X)
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "hits": len(hits)}))
"""


def _run(env_updates: dict[str, str | None], *args: str) -> dict:
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    for name, value in env_updates.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_its_programs_from_the_cache(tmp_path):
    cache = tmp_path / "xla"
    env = {
        "JAXMIX_COMPILATION_CACHE": str(cache),
        # Store every program, however quickly it compiled.
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    first = _run(env, "fit")
    assert first == {"dir": str(cache), "hits": 0}
    assert any(cache.iterdir())
    second = _run(env, "fit")
    assert second["hits"] > 0


def test_cache_can_be_turned_off_and_the_users_directory_stands(tmp_path):
    off = _run({"JAXMIX_COMPILATION_CACHE": "off", "XDG_CACHE_HOME": str(tmp_path)})
    assert off["dir"] is None
    assert not (tmp_path / "jaxmix").exists()

    default = _run({"JAXMIX_COMPILATION_CACHE": None, "XDG_CACHE_HOME": str(tmp_path)})
    assert default["dir"] == str(tmp_path / "jaxmix" / "xla")

    users = tmp_path / "mine"
    chosen = _run(
        {"JAXMIX_COMPILATION_CACHE": None, "JAX_COMPILATION_CACHE_DIR": str(users)}
    )
    assert chosen["dir"] == str(users)
