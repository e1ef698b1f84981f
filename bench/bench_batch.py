"""Many fits at once: jaxmix's vmapped fits against scikit-learn's Python loop.

(a) 10,000 data sets of N=500, D=2, K=3, full covariance, 50 EM iterations
    (tol=0, so both sides run exactly 50), k-means initialisation on both sides:
    ``jaxmix.fit_many`` against ``sklearn.mixture.GaussianMixture`` in a Python
    loop. The loop is timed on a slice of the data sets and scaled up.
(b) N=20,000, D=8, K=8, 16 restarts of 50 iterations: ``jaxmix.fit_restarts``
    (all restarts vmapped) against scikit-learn's ``n_init=16``.
(c) Peak resident memory (VmHWM) of 10^5 small fits with and without
    ``batch_size``, each in a fresh subprocess.

Everything runs in float64 (scikit-learn's precision; one float32 row for
jaxmix). jaxmix is warmed up (compiled) before timing, and every timing blocks
until the result is ready. scikit-learn is timed with its default threads and
with one thread (``threadpoolctl``); ratios use the faster of the two, because
its OpenMP threads slow down far more than jaxmix when the two cores are shared
with other work.

Usage: python bench/bench_batch.py [--quick] [--part a|b|c]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import _machine
import jax
import numpy as np
from threadpoolctl import threadpool_limits


def _stack(n_sets, n_samples, n_features, n_components, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(n_sets, n_components, n_features))
    labels = rng.integers(n_components, size=(n_sets, n_samples))
    points = np.take_along_axis(centres, labels[..., None], axis=1)
    return points + rng.normal(size=(n_sets, n_samples, n_features))


def _sklearn_fit(X, n_components, n_init, max_iter, seed):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    model = GaussianMixture(
        n_components,
        covariance_type="full",
        tol=0.0,
        max_iter=max_iter,
        n_init=n_init,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    return model


def _best_of(repeats, run):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return min(times)


def part_a(quick: bool) -> dict:
    import jaxmix
    from jaxmix import batch

    n_sets, n_samples, n_features, n_components, n_iter = 10_000, 500, 2, 3, 50
    if quick:
        n_sets = 1000
    n_loop = 20 if quick else 100
    Xs64 = _stack(n_sets, n_samples, n_features, n_components)
    family = jaxmix.families.Gaussian("full")
    key = jax.random.key(0)
    auto = batch.default_batch_size(n_samples, n_components, n_features)
    out = {
        "n_sets": n_sets,
        "sklearn_sets_timed": n_loop,
        "jaxmix": {},
        "auto_batch_size": auto,
    }
    configs = [
        ("float64", None),
        ("float64", 50),
        ("float64", 1000),
        ("float64", n_sets),
        ("float32", None),
    ]
    for dtype, batch_size in configs:
        Xs = Xs64.astype(dtype)
        slice_size = auto if batch_size is None else batch_size

        def run(Xs=Xs, batch_size=batch_size):
            return batch.fit_many(
                family,
                Xs,
                key,
                n_components,
                method="kmeans",
                max_iter=n_iter,
                tol=0.0,
                batch_size=batch_size,
            )

        with jax.enable_x64(dtype == "float64"):
            # Compile on one slice (the shape every slice shares), then time.
            start = time.perf_counter()
            jax.block_until_ready(run(Xs[:slice_size], slice_size))
            compile_seconds = time.perf_counter() - start
            start = time.perf_counter()
            result = jax.block_until_ready(run())
            seconds = time.perf_counter() - start
        assert int(result.n_iter.min()) == n_iter
        out["jaxmix"][f"{dtype} batch_size={batch_size}"] = {
            "seconds": seconds,
            "ms_per_set": 1e3 * seconds / n_sets,
            "first_slice_seconds": compile_seconds,
        }
        print(
            dtype,
            batch_size,
            out["jaxmix"][f"{dtype} batch_size={batch_size}"],
            flush=True,
        )
    for threads in (None, 1):
        with threadpool_limits(threads):
            start = time.perf_counter()
            for b in range(n_loop):
                _sklearn_fit(Xs64[b], n_components, 1, n_iter, b)
            loop = time.perf_counter() - start
        out[f"sklearn_ms_per_set threads={threads}"] = 1e3 * loop / n_loop
    sklearn_ms = min(v for k, v in out.items() if k.startswith("sklearn_ms"))
    out["sklearn_seconds_scaled"] = sklearn_ms * n_sets / 1e3
    for value in out["jaxmix"].values():
        value["speedup"] = sklearn_ms / value["ms_per_set"]
    return out


def part_b(quick: bool) -> dict:
    import jaxmix
    from jaxmix import batch

    n_samples, n_features, n_components, n_init, n_iter = 20_000, 8, 8, 16, 50
    if quick:
        n_init = 4
    X = _stack(1, n_samples, n_features, n_components, seed=1)[0]
    family = jaxmix.families.Gaussian("full")
    with jax.enable_x64(True):

        def run():
            return batch.fit_restarts(
                family,
                X,
                jax.random.key(0),
                n_components,
                n_init,
                method="kmeans",
                max_iter=n_iter,
                tol=0.0,
            )

        start = time.perf_counter()
        result = jax.block_until_ready(run())
        first = time.perf_counter() - start
        assert int(result.all.n_iter.min()) == n_iter
        seconds = _best_of(2, run)
        jax_ll = float(result.best.log_likelihood)
    out = {
        "n_init": n_init,
        "jaxmix_seconds": seconds,
        "jaxmix_first_call": first,
        "jaxmix_best_ll": jax_ll,
    }
    for threads in (None, 1):
        with threadpool_limits(threads):
            start = time.perf_counter()
            model = _sklearn_fit(X, n_components, n_init, n_iter, 0)
            out[f"sklearn_seconds threads={threads}"] = time.perf_counter() - start
    out["sklearn_best_ll"] = float(model.lower_bound_)
    sklearn_seconds = min(v for k, v in out.items() if k.startswith("sklearn_sec"))
    out["speedup"] = sklearn_seconds / seconds
    return out


_MEMORY_CHILD = """
import sys, time
import jax, numpy as np, jaxmix
from jaxmix import batch
sys.path.insert(0, {bench_dir!r})
from bench_batch import _stack
n_sets, batch_size = {n_sets}, {batch_size}
Xs = _stack(n_sets, 100, 2, 2, seed=2)
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
def reset_peak():
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
def fit():
    start = time.perf_counter()
    result = batch.fit_many(jaxmix.families.Gaussian("full"), Xs, jax.random.key(0),
                            2, max_iter=20, batch_size=batch_size)
    jax.block_until_ready(result)
    return time.perf_counter() - start
with jax.enable_x64(True):
    # First call: compilation included. Second call: the fit alone. The
    # high-water mark is reset before each, so making the data is not counted.
    reset_peak()
    before = status("VmRSS")
    first = fit()
    first_peak = status("VmHWM")
    between = status("VmRSS")  # the allocator keeps what compilation used
    reset_peak()
    second = fit()
    second_peak = status("VmHWM")
print({{"before_mib": before, "peak_first_call_mib": first_peak,
        "rss_between_calls_mib": between,
        "peak_second_call_mib": second_peak, "first_call_seconds": first,
        "second_call_seconds": second, "input_mib": Xs.nbytes / 2**20}})
"""


def part_c(quick: bool) -> dict:
    n_sets = 10_000 if quick else 100_000
    out = {"n_sets": n_sets, "shape": "N=100, D=2, K=2, full, max_iter=20"}
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    for batch_size in (None, 1000, n_sets):
        code = _MEMORY_CHILD.format(
            n_sets=n_sets, batch_size=batch_size, bench_dir=bench_dir
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        out[str(batch_size)] = eval(done.stdout.strip().splitlines()[-1])  # noqa: S307
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--part", choices=("a", "b", "c"), action="append")
    args = parser.parse_args()
    parts = args.part or ["a", "b", "c"]
    results = {
        "load_before": _machine.load(),
        "cpus": _machine.cpu_count(),
        "jax": _machine.version("jax"),
    }
    steal = _machine.Steal().start()
    for name in parts:
        results[name] = {"a": part_a, "b": part_b, "c": part_c}[name](args.quick)
        print(name, json.dumps(results[name], indent=1), flush=True)
    results["load_after"] = _machine.load()
    steal.stop()
    print(json.dumps(results, indent=1))
    print(steal.line())


if __name__ == "__main__":
    main()
