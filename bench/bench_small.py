"""Many tiny Gaussian fits: jaxmix's small-problem path against its general path
and scikit-learn's Python loop.

2000 data sets of N=500 samples, D=2, K=3, full covariance, 50 EM iterations
(tol=0, so every fit runs exactly 50), all from the same given starts on every
side (scikit-learn through ``weights_init``, ``means_init`` and
``precisions_init``). jaxmix runs ``jaxmix.fit_many`` with the path forced
(``_path="small"`` or ``"general"``) and default slices, in float64 and
float32, compiled first (a full run) and then timed (``block_until_ready``),
the four configurations round after round, best run kept, with the process
CPU time beside the wall time: a ratio near 2 means both cores worked.
scikit-learn is timed on a slice of the data sets and scaled up, with one
thread and with its default threads (best of two rounds each); the ratios use
the faster of the two.

The machine is shared: the load average is printed beside every timing.

Usage: python bench/bench_small.py [--quick] [--sets B] [--sklearn-sets S]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import _machine
import jax
import numpy as np
from threadpoolctl import threadpool_limits

N_SAMPLES, N_FEATURES, N_COMPONENTS, N_ITER = 500, 2, 3, 50


def _cpu() -> dict:
    return {
        "model": _machine.cpu_model(),
        "avx512f": _machine.has_avx512(),
        "cpus": _machine.cpu_count(),
    }


def _stack(n_sets, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n_sets, N_COMPONENTS, N_FEATURES)
    centres = rng.normal(scale=4.0, size=shape)
    labels = rng.integers(N_COMPONENTS, size=(n_sets, N_SAMPLES))
    points = np.take_along_axis(centres, labels[..., None], axis=1)
    return points + rng.normal(size=(n_sets, N_SAMPLES, N_FEATURES))


def _starts(Xs, seed=1):
    """Per data set: K of its samples as means, its covariance, equal weights."""
    from jaxmix.families import GaussianParams

    rng = np.random.default_rng(seed)
    n_sets = len(Xs)
    picks = np.stack(
        [rng.choice(N_SAMPLES, N_COMPONENTS, replace=False) for _ in range(n_sets)]
    )
    means = np.take_along_axis(Xs, picks[..., None], axis=1)
    covariance = (
        np.einsum(
            "bnd,bne->bde",
            Xs - Xs.mean(1, keepdims=True),
            Xs - Xs.mean(1, keepdims=True),
        )
        / N_SAMPLES
    )
    covariances = np.repeat(covariance[:, None], N_COMPONENTS, axis=1)
    weights = np.full((n_sets, N_COMPONENTS), 1.0 / N_COMPONENTS)
    return GaussianParams(weights, means, covariances)


def _timed(run, dtype):
    """Wall and process CPU time of one run."""
    with jax.enable_x64(dtype == "float64"):
        cpu, wall = time.process_time(), time.perf_counter()
        jax.block_until_ready(run())
        return time.perf_counter() - wall, time.process_time() - cpu


def _compiled_run(Xs, starts, dtype, path):
    """A fit of the whole stack on ``path``, compiled (run once); its first result."""
    import jaxmix
    from jaxmix.engine import em
    from jaxmix.families import Gaussian

    family = Gaussian("full")
    Xs = Xs.astype(dtype)
    starts = jax.tree.map(lambda leaf: leaf.astype(dtype), starts)

    def run():
        return jaxmix.fit_many(
            family,
            Xs,
            jax.random.key(0),
            N_COMPONENTS,
            params=starts,
            max_iter=N_ITER,
            tol=0.0,
            _path=path,
        )

    with jax.enable_x64(dtype == "float64"):
        start = time.perf_counter()
        result = jax.device_get(jax.block_until_ready(run()))  # every slice shape
        first = time.perf_counter() - start
    # A fit that meets a non-finite value (float32, a component collapsing onto
    # a point) stops early, in either path; the rest run N_ITER.
    nonfinite = int(np.sum(result.status == em.NONFINITE))
    assert np.all((result.n_iter == N_ITER) | (result.status == em.NONFINITE))
    return run, result, {"first_call_seconds": first, "nonfinite_fits": nonfinite}


def _jaxmix(Xs, starts, rounds):
    """Every configuration compiled, then timed round after round (best kept).

    Interleaving the configurations spreads a burst of load from other
    processes over all of them instead of one.
    """
    configs = [
        (dtype, path)
        for dtype in ("float64", "float32")
        for path in ("small", "general")
    ]
    runs, fits, out = {}, {}, {}
    for dtype, path in configs:
        runs[dtype, path], fits[dtype, path], out[dtype, path] = _compiled_run(
            Xs, starts, dtype, path
        )
    best = {}
    for _ in range(rounds):
        for dtype, path in configs:
            wall, cpu = _timed(runs[dtype, path], dtype)
            if (dtype, path) not in best or wall < best[dtype, path][0]:
                best[dtype, path] = (wall, cpu, _machine.load())
    n_sets = len(Xs)
    for key, (wall, cpu, load) in best.items():
        out[key].update(
            ms_per_set=1e3 * wall / n_sets,
            seconds=wall,
            cpu_over_wall=cpu / wall,
            load=load,
        )
        print(*key, out[key], flush=True)
    return {f"{dtype} {path}": value for (dtype, path), value in out.items()}, fits


def _refitted_centred(Xs, result):
    """How many float64 data sets the small path fitted again, centred."""
    from jaxmix.engine import small
    from jaxmix.families import Gaussian

    return int(np.sum(small.imprecise(Gaussian("full"), small.spreads(Xs), result)))


def _sklearn(Xs, starts, n_sets, threads):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    precisions = np.linalg.inv(starts.covariances)
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cpu, wall = time.process_time(), time.perf_counter()
        for b in range(n_sets):
            GaussianMixture(
                N_COMPONENTS,
                covariance_type="full",
                tol=0.0,
                max_iter=N_ITER,
                # Overridden by the given starts; the cheapest to compute.
                init_params="random_from_data",
                weights_init=starts.weights[b],
                means_init=starts.means[b],
                precisions_init=precisions[b],
                random_state=b,
            ).fit(Xs[b])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out = {
        "ms_per_set": 1e3 * wall / n_sets,
        "cpu_ms_per_set": 1e3 * cpu / n_sets,
        "sets_timed": n_sets,
        "load": _machine.load(),
    }
    print("sklearn threads", threads, out, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sets and runs")
    parser.add_argument("--sets", type=int, default=2000)
    parser.add_argument("--sklearn-sets", type=int, default=40)
    args = parser.parse_args()
    n_sets = 400 if args.quick else args.sets
    rounds = 2 if args.quick else 4
    results = {
        "cpu": _cpu(),
        "jax": _machine.version("jax"),
        "workload": f"{n_sets} sets, N={N_SAMPLES}, D={N_FEATURES}, "
        f"K={N_COMPONENTS}, full, {N_ITER} iterations, tol=0, given starts",
        "load_before": _machine.load(),
    }
    print(json.dumps(results, indent=1), flush=True)
    steal = _machine.Steal().start()
    Xs = _stack(n_sets)
    starts = _starts(Xs)
    jaxmix_out, fits = _jaxmix(Xs, starts, rounds)
    small64, general64 = fits["float64", "small"], fits["float64", "general"]
    results["float64 small vs general: max |Δ| (weights, means, covariances)"] = [
        float(np.max(np.abs(a - b)))
        for a, b in zip(small64.params, general64.params, strict=True)
    ]
    results["float64 small: data sets refitted centred"] = _refitted_centred(
        Xs, small64
    )
    results["jaxmix"] = jaxmix_out
    sklearn_sets = min(args.sklearn_sets, n_sets)
    for _ in range(2):
        for name, threads in (("threads=1", 1), ("threads=default", None)):
            timing = _sklearn(Xs, starts, sklearn_sets, threads)
            kept = results.get(f"sklearn {name}")
            if kept is None or timing["ms_per_set"] < kept["ms_per_set"]:
                results[f"sklearn {name}"] = timing
    sklearn_ms = min(
        results["sklearn threads=1"]["ms_per_set"],
        results["sklearn threads=default"]["ms_per_set"],
    )
    results["ratios (sklearn ms per set / jaxmix ms per set)"] = {
        name: sklearn_ms / value["ms_per_set"] for name, value in jaxmix_out.items()
    }
    results["small over general"] = {
        dtype: jaxmix_out[f"{dtype} general"]["ms_per_set"]
        / jaxmix_out[f"{dtype} small"]["ms_per_set"]
        for dtype in ("float64", "float32")
    }
    results["load_after"] = _machine.load()
    steal.stop()
    print(json.dumps(results, indent=1))
    print(steal.line())


if __name__ == "__main__":
    main()
