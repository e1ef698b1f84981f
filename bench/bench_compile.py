"""Fixed costs of a fit: importing, compiling, the persistent cache, a warm fit.

Every measurement that involves a first call runs in a fresh Python process, so
nothing is compiled in memory beforehand:

(a) ``import jaxmix`` and the first ``GaussianMixture(3).fit`` on iris, with
    the persistent compilation cache off, with an empty cache (cold), and with
    the cache the cold run filled (warm); scikit-learn's import and first fit.
(b) ``GridSearchCV`` over ``n_components`` 1-4 x 5 folds on iris (the folds
    differ in size), total time in a fresh process, for jaxmix cold, warm and
    with the cache off, and for scikit-learn.
(c) A warm ``GaussianMixture(3).fit`` on iris (the same process, after two
    fits), median of repeats, against scikit-learn on one thread and on its
    default threads.

Both libraries fit in float64 with the same settings (k-means start, tol 1e-3,
at most 100 iterations). Prints the CPU model, whether it has AVX-512 and the
load average: this machine may be shared, and compile times move with load.

Usage: python bench/bench_compile.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _machine

_FIRST_FIT = r"""
import json, sys, time
t0 = time.perf_counter()
if sys.argv[1] == "jaxmix":
    import jaxmix
    Model = jaxmix.GaussianMixture
else:
    from sklearn.mixture import GaussianMixture as Model
from sklearn.datasets import load_iris
X = load_iris().data
t1 = time.perf_counter()
Model(3, random_state=0).fit(X)
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first_fit": t2 - t1}))
"""

_GRID = r"""
import json, sys, time
t0 = time.perf_counter()
if sys.argv[1] == "jaxmix":
    import jaxmix
    Model = jaxmix.GaussianMixture
else:
    from sklearn.mixture import GaussianMixture as Model
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
X = load_iris().data
t1 = time.perf_counter()
GridSearchCV(Model(random_state=0), {"n_components": [1, 2, 3, 4]}, cv=5).fit(X)
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "grid": t2 - t1}))
"""


def cpu_description() -> str:
    avx512 = "AVX-512" if _machine.has_avx512() else "no AVX-512"
    return f"{_machine.cpu_model()}, {_machine.cpu_count()} logical CPUs, {avx512}"


def _fresh(script: str, library: str, cache: str | None) -> dict:
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JAXMIX_COMPILATION_CACHE"] = cache or "off"
    env["JAX_ENABLE_X64"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", script, library],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best(runs: list[dict]) -> dict:
    return {key: min(run[key] for run in runs) for key in runs[0]}


def fresh_processes(script: str, repeats: int) -> dict[str, dict]:
    """jaxmix cache off / cold / warm and scikit-learn, best of ``repeats``."""
    runs: dict[str, list[dict]] = {"off": [], "cold": [], "warm": [], "sklearn": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            runs["off"].append(_fresh(script, "jaxmix", None))
            runs["cold"].append(_fresh(script, "jaxmix", cache))
            runs["warm"].append(_fresh(script, "jaxmix", cache))
        runs["sklearn"].append(_fresh(script, "sklearn", None))
    return {name: _best(values) for name, values in runs.items()}


def warm_fit(repeats: int) -> dict[str, float]:
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.mixture import GaussianMixture as Reference
    from threadpoolctl import threadpool_limits

    import jaxmix

    X = load_iris().data

    def timed(fit) -> float:
        for _ in range(2):
            fit()
        times = []
        for _ in range(max(repeats, 5) * 4):
            start = time.perf_counter()
            fit()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    out = {"jaxmix": timed(lambda: jaxmix.GaussianMixture(3, random_state=0).fit(X))}
    out["sklearn"] = timed(lambda: Reference(3, random_state=0).fit(X))
    with threadpool_limits(1):
        out["sklearn_1_thread"] = timed(lambda: Reference(3, random_state=0).fit(X))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(cpu_description())
    print(f"load average before: {_machine.load()}")
    steal = _machine.Steal().start()

    first = fresh_processes(_FIRST_FIT, args.repeats)
    print("\n(a) fresh process: import, first GaussianMixture(3).fit on iris [s]")
    for name, row in first.items():
        fit = row["first_fit"]
        print(f"  {name:8s} import {row['import']:6.2f}  first fit {fit:6.2f}")
    print(
        f"  first fit, warm cache / scikit-learn: "
        f"{first['warm']['first_fit'] / first['sklearn']['first_fit']:.1f}x"
    )

    grid = fresh_processes(_GRID, args.repeats)
    print("\n(b) fresh process: GridSearchCV n_components 1-4 x 5 folds on iris [s]")
    for name, row in grid.items():
        print(f"  {name:8s} import {row['import']:6.2f}  grid {row['grid']:6.2f}")
    for name in ("off", "cold", "warm"):
        ratio = grid[name]["grid"] / grid["sklearn"]["grid"]
        print(f"  jaxmix {name} / scikit-learn: {ratio:.1f}x")

    warm = warm_fit(args.repeats)
    print("\n(c) warm GaussianMixture(3).fit on iris, median [ms]")
    for name, value in warm.items():
        print(f"  {name:17s} {value * 1e3:7.1f}")
    best = min(warm["sklearn"], warm["sklearn_1_thread"])
    print(f"  jaxmix / scikit-learn (its faster setting): {warm['jaxmix'] / best:.2f}x")
    steal.stop()
    print(f"\nload average after: {_machine.load()}")
    print(steal.line())


if __name__ == "__main__":
    main()
