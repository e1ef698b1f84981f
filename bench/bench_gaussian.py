"""The Gaussian EM engine against scikit-learn's GaussianMixture.

Cases (issue 2's benchmark):

- full covariance, N=200,000, D=32, K=16;
- diagonal covariance, N=1,000,000, D=16, K=32;

each for 20 EM iterations from the same start (weights, means and precisions
given to scikit-learn as ``weights_init``/``means_init``/``precisions_init``,
``tol=0`` on its side and a negative ``tol`` on ours, so both run exactly 20
iterations), in float64 and float32.

What is reported, per case and dtype:

- jaxmix: compile time (first call minus a warm call) and time per iteration
  (best warm fit of 20 iterations / 20), with achieved GFLOP/s for full
  covariance (4·N·K·D² per iteration: 2·N·K·D² for the Mahalanobis products,
  as much for the second moments) against this machine's matrix-product
  ceiling, measured here with a square product in the same dtype;
- scikit-learn: time per iteration, (t(20 iterations) − t(1 iteration)) / 19,
  which leaves out its set-up (it estimates parameters from an initial
  responsibility matrix even when all ``*_init`` are given) and its final
  E-step;
- ratios: scikit-learn / jaxmix per iteration, and for whole 20-iteration fits;
- agreement: the largest difference of the fitted means and of the mean
  log-likelihood between the two (float64 should agree to ~1e-10).

Everything runs in one process; the contenders alternate within each repeat and
the best repeat is kept; the load average is printed (this machine is shared).
scikit-learn runs with numpy's BLAS as configured by the environment (see the
printed threadpoolctl line: ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` change
it; run once more under ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` to
compare).

Usage: python bench/bench_gaussian.py [--quick] [--repeats R] [--cases full,diag]
    [--dtypes float64,float32] [--no-sklearn]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import _machine
import jax
import jax.numpy as jnp
import numpy as np

CASES = {
    "full": dict(n_samples=200_000, n_features=32, n_components=16),
    "diag": dict(n_samples=1_000_000, n_features=16, n_components=32),
    # issue 13's moderate size, where both cores are hardest to keep busy
    "full50k": dict(n_samples=50_000, n_features=32, n_components=16),
}
QUICK = {
    "full": dict(n_samples=20_000, n_features=8, n_components=4),
    "diag": dict(n_samples=50_000, n_features=8, n_components=8),
    "full50k": dict(n_samples=5_000, n_features=8, n_components=4),
}


def machine() -> list[str]:
    """Lines describing the machine and the software versions."""
    gib = _machine.memory_gib()
    memory = "memory unknown" if gib is None else f"{gib:.0f} GiB memory"
    env = {
        k: os.environ.get(k, "unset") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    return [
        f"CPU: {_machine.cpu_model()}, {_machine.cpu_count()} cores, {memory}",
        f"{_machine.versions('jax', 'numpy', 'scikit-learn')}; "
        f"BLAS (threadpoolctl): {_machine.blas()}",
        "environment: " + ", ".join(f"{k}={v}" for k, v in env.items()),
    ]


def _best(function, repeats):
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        jax.block_until_ready(function())
        times.append(time.perf_counter() - begin)
    return min(times)


def matmul_ceiling(dtype, size, repeats=5) -> float:
    """GFLOP/s of a square matrix product in XLA, in ``dtype``."""
    with jax.enable_x64(dtype == np.float64):
        a = jnp.asarray(np.random.default_rng(0).random((size, size)), dtype)
        product = jax.jit(lambda a: a @ a)
        jax.block_until_ready(product(a))
        return 2 * size**3 / _best(lambda: product(a), repeats) / 1e9


def numpy_ceiling(dtype, size, repeats=3) -> float:
    """GFLOP/s of the same product through numpy's BLAS."""
    a = np.random.default_rng(0).random((size, size)).astype(dtype)
    times = []
    for _ in range(repeats + 1):
        begin = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - begin)
    return 2 * size**3 / min(times[1:]) / 1e9


def problem(covariance_type, n_samples, n_features, n_components, seed=0):
    """Well-separated blobs and a common start: K random samples as means, the
    data's covariance (full) or variances (diag) for every component."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_components, n_features))
    X = centres[rng.integers(n_components, size=n_samples)]
    X += rng.normal(size=(n_samples, n_features))
    means = X[rng.choice(n_samples, n_components, replace=False)]
    weights = np.full(n_components, 1.0 / n_components)
    if covariance_type == "full":
        covariance = np.cov(X, rowvar=False)
        covariances = np.broadcast_to(
            covariance, (n_components, n_features, n_features)
        )
        precisions = np.broadcast_to(np.linalg.inv(covariance), covariances.shape)
    else:
        variances = X.var(axis=0)
        covariances = np.broadcast_to(variances, (n_components, n_features))
        precisions = 1.0 / covariances
    return X, weights, means, np.array(covariances), np.array(precisions)


def run_case(
    covariance_type, shape, dtype, n_iter, repeats, sk_repeats, ceiling, use_sklearn
):
    import jaxmix
    from jaxmix.families import Gaussian, GaussianParams

    covariance_type = covariance_type.removesuffix("50k")
    X, weights, means, covariances, precisions = problem(covariance_type, **shape)
    data = X.astype(dtype)
    n_samples, n_features = X.shape
    n_components = means.shape[0]
    family = Gaussian(covariance_type)
    out = dict(case=covariance_type, dtype=np.dtype(dtype).name, **shape)

    with jax.enable_x64(dtype == np.float64):
        device_data = jnp.asarray(data)
        start = GaussianParams(
            jnp.asarray(weights, dtype),
            jnp.asarray(means, dtype),
            jnp.asarray(covariances, dtype),
        )

        def fit():
            # tol < 0: the change is never below it, so exactly n_iter iterations.
            return jaxmix.fit(family, device_data, start, max_iter=n_iter, tol=-1.0)

        begin = time.perf_counter()
        result = jax.block_until_ready(fit())
        first = time.perf_counter() - begin
        assert int(result.n_iter) == n_iter, result.n_iter

    def sklearn_fit(max_iter):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return GaussianMixture(
                n_components,
                covariance_type=covariance_type,
                tol=0,
                max_iter=max_iter,
                init_params="random_from_data",
                weights_init=weights,
                means_init=means,
                precisions_init=precisions,
            ).fit(data)

    jax_times, sk_full, sk_one = [], [], []
    for _ in range(repeats):
        with jax.enable_x64(dtype == np.float64):
            jax_times.append(_best(fit, 1))
        if use_sklearn and len(sk_full) < sk_repeats:
            begin = time.perf_counter()
            reference = sklearn_fit(n_iter)
            sk_full.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            sklearn_fit(1)
            sk_one.append(time.perf_counter() - begin)

    warm = min(jax_times)
    out.update(
        compile_s=first - warm,
        jax_fit_s=warm,
        jax_iter_ms=warm / n_iter * 1e3,
        load=_machine.load(1),
    )
    if covariance_type == "full":
        flops = 4 * n_samples * n_components * n_features**2
        out["gflops"] = flops / (warm / n_iter) / 1e9
        out["ceiling"] = ceiling
    if use_sklearn:
        sk_iter = (min(sk_full) - min(sk_one)) / (n_iter - 1)
        out.update(
            sk_fit_s=min(sk_full),
            sk_iter_ms=sk_iter * 1e3,
            ratio_iter=sk_iter / (warm / n_iter),
            ratio_fit=min(sk_full) / warm,
            means_gap=float(
                np.max(np.abs(np.asarray(result.params.means) - reference.means_))
            ),
            ll_gap=abs(float(result.log_likelihood) - reference.lower_bound_),
        )
    return out


def table(rows) -> str:
    head = (
        "| case | dtype | jaxmix ms/iter | compile s | GFLOP/s (% of ceiling) | "
        "sklearn ms/iter | ratio/iter | ratio/fit | max Δmeans | Δlog-lik |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        gf = (
            f"{r['gflops']:.0f} ({100 * r['gflops'] / r['ceiling']:.0f}%)"
            if "gflops" in r
            else "—"
        )
        sk = "— | — | — | — | —"
        if "sk_iter_ms" in r:
            sk = (
                f"{r['sk_iter_ms']:.0f} | **{r['ratio_iter']:.1f}x** | "
                f"{r['ratio_fit']:.1f}x | {r['means_gap']:.1e} | {r['ll_gap']:.1e}"
            )
        name = (
            f"{r['case']} N={r['n_samples']:,} D={r['n_features']} "
            f"K={r['n_components']}"
        )
        lines.append(
            f"| {name} | {r['dtype']} | {r['jax_iter_ms']:.1f} | "
            f"{r['compile_s']:.1f} | {gf} | {sk} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes")
    parser.add_argument("--repeats", type=int, default=3, help="jaxmix repeats")
    parser.add_argument("--sklearn-repeats", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--cases", default="full,diag")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--no-sklearn", action="store_true")
    args = parser.parse_args()

    print("\n".join(machine()))
    steal = _machine.Steal().start()
    size = 512 if args.quick else 4096
    ceilings = {}
    for name in args.dtypes.split(","):
        dtype = np.dtype(name).type
        ceilings[name] = matmul_ceiling(dtype, size)
        print(
            f"square {size}x{size} matrix product, {name}: "
            f"XLA {ceilings[name]:.0f} GFLOP/s, "
            f"numpy {numpy_ceiling(dtype, size):.0f} GFLOP/s; load {_machine.load(1)}",
            flush=True,
        )
    shapes = QUICK if args.quick else CASES
    rows = []
    for case in args.cases.split(","):
        for name in args.dtypes.split(","):
            row = run_case(
                case,
                shapes[case],
                np.dtype(name).type,
                args.iters,
                args.repeats,
                args.sklearn_repeats,
                ceilings[name],
                not args.no_sklearn,
            )
            rows.append(row)
            print(
                f"{case} {name}: jaxmix {row['jax_iter_ms']:.1f} ms/iter "
                f"(compile {row['compile_s']:.1f} s)"
                + (
                    f", sklearn {row['sk_iter_ms']:.0f} ms/iter, "
                    f"ratio {row['ratio_iter']:.1f}x"
                    if "sk_iter_ms" in row
                    else ""
                )
                + f"; load {row['load']}",
                flush=True,
            )
    steal.stop()
    print(steal.line())
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
