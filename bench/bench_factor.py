"""Mixture of factor analysers against full-covariance Gaussian EM.

The factor family's EM iteration costs O(N·K·D·q) (nothing D×D is formed); a
full-covariance Gaussian iteration costs O(N·K·D²). This benchmark measures the
time per EM iteration of

- jaxmix's mixture of factor analysers (``jaxmix.fit`` with
  ``jaxmix.families.FactorAnalyzer(n_factors=q)``, the engine under
  ``jaxmix.FactorMixture``);
- jaxmix's full-covariance Gaussian EM (``jaxmix.fit`` with
  ``jaxmix.families.Gaussian("full")``);
- scikit-learn's ``GaussianMixture(covariance_type="full")``, the peer;

and the mean log-likelihood of each fit on held-out data, on

- (i) digits: scikit-learn's 1,797 images of 8×8 pixels (D=64), 75% for the
  fits and 25% held out (fixed seed), K=10, q=8, ``reg_covar=1e-2`` for every
  contender (three pixels are constant);
- (ii) synthetic: N=200,000 training and N/4 held-out samples drawn from a
  mixture of factor analysers with D=128, K=16, q=8 (``reg_covar=1e-6``).

Every contender starts from the same model: k-means labels (best of four
restarts), then a weighted factor analysis of each cluster
(``FactorAnalyzer.reference``), computed once in float64 (on a random
subsample of at most 20,000 training samples for the synthetic case) and cast
to each dtype; the Gaussian contenders start from its covariances
Λ_kΛ_kᵀ + Ψ_k (scikit-learn through ``weights_init``, ``means_init`` and
``precisions_init``), i.e. from the same density.

Timing: every contender runs a fixed number of iterations (``max_iter``,
``tol=0``, so EM never stops early). jaxmix's fits are compiled by a warm-up
fit of the same shapes first, then timed (``block_until_ready``); time per
iteration is the wall time of a fit divided by the iterations it ran.
scikit-learn's time per iteration is (t(max_iter) − t(1)) / (max_iter − 1),
which leaves out its set-up (it estimates parameters from initial
responsibilities even when all ``*_init`` are given) and its final E-step.
It runs with one BLAS/OpenMP thread and with its default threads
(``threadpoolctl``), and the faster is kept. On a busy machine its default
threads are many times slower (measured here at load 4 on 2 cores: 10.7 s
against 0.9 s per iteration at N=20,000, D=128, K=16), so by default
(``--sklearn-threads auto``) only one thread is timed when the load average
exceeds the number of CPUs; the choice is printed.
The contenders alternate within each repeat and the best repeat is kept; the
load average is printed beside each case (this machine is shared). Ratios
above 1 mean the factor mixture is faster. "compile" is the warm-up fit's time
minus the best timed fit's (near zero when JAX's persistent compilation cache,
which jaxmix turns on, already holds the program).

The held-out column is the mean log-likelihood per held-out sample after the
fixed iterations (not at convergence), "train" the mean log-likelihood of the
training data at the last E-step; for the synthetic case the generating
model's held-out log-likelihood is printed as well. The last column is the
largest difference between jaxmix's and scikit-learn's full-covariance means:
from the same start after the same iterations they agree to round-off (about
1e-12 in float64).

Usage: python bench/bench_factor.py [--quick] [--cases digits,synthetic]
    [--n N] [--features D] [--components K] [--factors Q] [--iters I]
    [--repeats R] [--dtypes float32,float64]
    [--sklearn-threads auto|both|1|default|none]
"""

from __future__ import annotations

import argparse
import functools
import os
import time
import warnings

import _machine
import jax
import jax.numpy as jnp
import numpy as np

#: Iterations per timed fit. Large enough that the per-fit overhead (a few
#: milliseconds) is small against the iterations; the synthetic case's full-
#: covariance iterations take seconds each, so four are enough there.
ITERS = {"digits": 20, "synthetic": 4}
#: Timed fits per contender (the best is kept); one for the synthetic case,
#: whose fits take tens of seconds, so that the full run stays near ten minutes.
REPEATS = {"digits": 3, "synthetic": 1}
SYNTHETIC = dict(n_samples=200_000, n_features=128, n_components=16, n_factors=8)
QUICK_SYNTHETIC = dict(n_samples=20_000, n_features=128, n_components=16, n_factors=8)
DIGITS = dict(n_components=10, n_factors=8)
START_SAMPLES = 20_000
HELD_OUT_BLOCK = 8192


def machine() -> list[str]:
    """Lines on the CPU (model, AVX-512), memory, versions and BLAS threads."""
    gib = _machine.memory_gib()
    memory = "memory unknown" if gib is None else f"{gib:.0f} GiB memory"
    avx512 = _machine.avx512_flags()
    return [
        f"CPU: {_machine.cpu_model()}, {_machine.cpu_count()} logical CPUs, {memory}",
        "AVX-512: " + (f"yes ({' '.join(avx512)})" if avx512 else "no"),
        f"{_machine.versions('jax', 'numpy', 'scikit-learn')}; "
        f"BLAS (threadpoolctl): {_machine.blas()}",
        f"load average before: {_machine.load()}",
    ]


# ----------------------------------------------------------------------------
# Data and the common start
# ----------------------------------------------------------------------------


def digits_problem(seed=0):
    """Digits split 75/25 with a fixed seed: (train, held-out, truth=None)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, _ = load_digits(return_X_y=True)
    train, test = train_test_split(X, test_size=0.25, random_state=seed)
    return train, test, None


def synthetic_problem(n_samples, n_features, n_components, n_factors, seed=0):
    """Samples of a random mixture of factor analysers, and that mixture.

    Means N(0, 8²) per coordinate, loadings N(0, 1), noise variances uniform
    in [0.5, 1.5], weights Dirichlet(5). The means are far apart (about
    8·√(2D) against a spread of about √D along each factor) so that k-means
    finds the components and the start is near the generating model: with
    N(0, 2²) means it merges some (k-means partitions are nearly spherical, the
    components are not), and a q-factor component cannot fit two merged ones.
    """
    from jaxmix.families import FactorParams

    rng = np.random.default_rng(seed)
    shape = (n_components, n_features)
    truth = FactorParams(
        weights=rng.dirichlet(np.full(n_components, 5.0)),
        means=rng.normal(scale=8.0, size=shape),
        loadings=rng.normal(size=(*shape, n_factors)),
        noise_variances=rng.uniform(0.5, 1.5, size=shape),
    )

    def draw(count):
        labels = rng.choice(n_components, size=count, p=truth.weights)
        X = np.empty((count, n_features))
        for k in range(n_components):  # no (N, D, q) array of loadings
            rows = labels == k
            factors = rng.standard_normal((rows.sum(), n_factors))
            noise = rng.standard_normal((rows.sum(), n_features))
            X[rows] = (
                truth.means[k]
                + factors @ truth.loadings[k].T
                + noise * np.sqrt(truth.noise_variances[k])
            )
        return X

    return draw(n_samples), draw(n_samples // 4), truth


def common_start(X, n_components, n_factors, reg_covar, seed=0):
    """The factor-analyser start (float64, NumPy leaves) and its covariances.

    K-means (the best of four restarts) on at most ``START_SAMPLES`` samples,
    then each cluster's weighted factor analysis
    (:meth:`jaxmix.families.FactorAnalyzer.reference` at the one-hot labels,
    at most ten accelerated cycles, as ``jaxmix.FactorMixture`` starts).
    """
    import jaxmix
    from jaxmix.families import FactorAnalyzer

    rng = np.random.default_rng(seed)
    if len(X) > START_SAMPLES:
        X = X[rng.choice(len(X), START_SAMPLES, replace=False)]
    labels = jaxmix.KMeans(n_components, n_init=4, random_state=seed).fit(X).labels_
    # At most ten accelerated cycles, as jaxmix.FactorMixture's starts.
    family = FactorAnalyzer(
        n_factors=n_factors, reg_covar=reg_covar, reference_steps=10
    )
    with jax.enable_x64(True):
        resp = jax.nn.one_hot(jnp.asarray(labels), n_components, dtype=jnp.float64)
        params = jax.jit(family.reference)(jnp.asarray(X, jnp.float64), resp)
        covariances = family.covariances(params)
        params, covariances = jax.device_get((params, covariances))
    return params, np.asarray(covariances)


# ----------------------------------------------------------------------------
# Contenders
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _held_out_sum(family, params, blocks, mask):
    """Σ_n log p(x_n) over (B, C, D) blocks of held-out data; mask (B, C)."""
    import jaxmix

    def one(args):
        block, keep = args
        return jnp.sum(jnp.where(keep, jaxmix.e_step(family, params, block)[1], 0.0))

    return jnp.sum(jax.lax.map(one, (blocks, mask)))


def held_out(family, params, X):
    """Mean log-likelihood of X under params, in blocks (no N×K×D at once)."""
    n_samples, n_features = X.shape
    block = min(n_samples, HELD_OUT_BLOCK)
    n_blocks = -(-n_samples // block)
    padded = np.zeros((n_blocks * block, n_features), X.dtype)
    padded[:n_samples] = X
    mask = np.arange(n_blocks * block) < n_samples
    total = _held_out_sum(
        family,
        params,
        jnp.asarray(padded.reshape(n_blocks, block, n_features)),
        jnp.asarray(mask.reshape(n_blocks, block)),
    )
    return float(total) / n_samples


class JaxmixContender:
    """``jaxmix.fit`` of one family from a fixed start, compiled on creation."""

    def __init__(self, family, X, start, n_iter, dtype):
        import jaxmix

        self.family, self.n_iter, self.dtype = family, n_iter, dtype
        self.x64 = dtype == np.float64
        with jax.enable_x64(self.x64):
            self.X = jnp.asarray(X, dtype)
            self.start = jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), start)
            self._fit = functools.partial(
                jaxmix.fit, family, self.X, self.start, max_iter=n_iter, tol=0.0
            )
            begin = time.perf_counter()
            self.result = jax.block_until_ready(self._fit())  # warm-up: compiles
            self.first_s = time.perf_counter() - begin
        self.times = []

    def run(self):
        with jax.enable_x64(self.x64):
            begin = time.perf_counter()
            result = jax.block_until_ready(self._fit())
            self.times.append(time.perf_counter() - begin)
        ran = int(result.n_iter)
        if ran != self.n_iter:
            from jaxmix.engine.em import STATUS_NAMES

            raise RuntimeError(
                f"{self.family!r} stopped after {ran} of {self.n_iter} iterations "
                f"({STATUS_NAMES[int(result.status)]})"
            )
        self.result = result

    def summary(self, X_test):
        best = min(self.times)
        with jax.enable_x64(self.x64):
            score = held_out(self.family, self.result.params, X_test.astype(self.dtype))
        return dict(
            ms_iter=1e3 * best / self.n_iter,
            compile_s=self.first_s - best,
            train=float(self.result.log_likelihood),
            held_out=score,
            means=np.asarray(self.result.params.means, np.float64),
        )


class SklearnContender:
    """scikit-learn's full-covariance GaussianMixture from the same start."""

    def __init__(self, X, start, covariances, reg_covar, n_iter, dtype, threads):
        self.X = np.asarray(X, dtype)
        self.start, self.n_iter = start, n_iter
        self.precisions = np.linalg.inv(covariances)
        self.reg_covar = reg_covar
        self.threads = threads  # None: BLAS's and OpenMP's defaults
        self.full, self.one = [], []

    def _fit(self, max_iter):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture
        from threadpoolctl import threadpool_limits

        with threadpool_limits(self.threads), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            begin = time.perf_counter()
            model = GaussianMixture(
                len(self.start.weights),
                covariance_type="full",
                tol=0.0,
                reg_covar=self.reg_covar,
                max_iter=max_iter,
                # Overridden by the given starts; the cheapest to compute.
                init_params="random_from_data",
                weights_init=self.start.weights,
                means_init=self.start.means,
                precisions_init=self.precisions,
                random_state=0,
            ).fit(self.X)
            return time.perf_counter() - begin, model

    def run(self):
        seconds, self.model = self._fit(self.n_iter)
        self.full.append(seconds)
        self.one.append(self._fit(1)[0])

    def summary(self, X_test):
        per_iter = (min(self.full) - min(self.one)) / (self.n_iter - 1)
        return dict(
            ms_iter=1e3 * per_iter,
            fit_s=min(self.full),
            train=float(self.model.lower_bound_),
            held_out=float(self.model.score(X_test.astype(self.X.dtype))),
            means=np.asarray(self.model.means_, np.float64),
        )


def run_case(
    name, problem, start, shape, dtype, n_iter, repeats, sklearn_threads, reg_covar
):
    """One case in one dtype: every contender compiled, then timed in turns."""
    from jaxmix.families import FactorAnalyzer, Gaussian, GaussianParams

    X, X_test, truth = problem
    start, covariances = start
    n_components, n_factors = shape["n_components"], shape["n_factors"]
    factor_family = FactorAnalyzer(n_factors=n_factors, reg_covar=reg_covar)
    gaussian_family = Gaussian("full", reg_covar=reg_covar)
    gaussian_start = GaussianParams(start.weights, start.means, covariances)
    contenders = {
        "factor": JaxmixContender(factor_family, X, start, n_iter, dtype),
        "full": JaxmixContender(gaussian_family, X, gaussian_start, n_iter, dtype),
    }
    for threads in sklearn_threads:
        contenders[f"sklearn {threads or 'default'}"] = SklearnContender(
            X, start, covariances, reg_covar, n_iter, dtype, threads
        )
    for _ in range(repeats):
        for contender in contenders.values():
            contender.run()
    out = {key: c.summary(X_test) for key, c in contenders.items()}
    # scikit-learn's threads slow it down many times on a busy machine
    # (OpenMP waits for cores): the faster setting is its time.
    threads = {key: value.pop("ms_iter") for key, value in out.items() if " " in key}
    if threads:
        faster = min(threads, key=threads.get)
        out["sklearn"] = dict(out[faster], ms_iter=threads[faster])
        for key in threads:
            del out[key]
    row = dict(
        case=name,
        dtype=np.dtype(dtype).name,
        N=len(X),
        D=X.shape[1],
        K=n_components,
        q=n_factors,
        iters=n_iter,
        load=_machine.load(),
        sklearn_threads={key.split()[1]: ms for key, ms in threads.items()},
        **{
            f"{key}_{field}": value
            for key, s in out.items()
            for field, value in s.items()
        },
    )
    if truth is not None:
        with jax.enable_x64(True):
            row["truth_held_out"] = held_out(
                FactorAnalyzer(n_factors=n_factors),
                jax.tree.map(jnp.asarray, truth),
                X_test,
            )
    return row


def tables(rows) -> str:
    """The timings and the log-likelihoods as two Markdown tables."""

    def cell(row, key, spec):
        return format(row[key], spec) if key in row else "—"

    def sklearn_cell(row):
        if "sklearn_ms_iter" not in row:
            return "—"
        times = row["sklearn_threads"]
        names = {"1": "1 thread", "default": "default threads"}
        others = ", ".join(f"{names[key]} {ms:.1f}" for key, ms in times.items())
        return f"{row['sklearn_ms_iter']:.1f} ({others})"

    def ratio(row, slower, faster):
        keys = (f"{slower}_ms_iter", f"{faster}_ms_iter")
        if not all(key in row for key in keys):
            return "—"
        return f"{row[keys[0]] / row[keys[1]]:.1f}x"

    lines = [
        "Time per EM iteration (ms), and ratios of these times (above 1: the "
        "first-named is slower)",
        "",
        "| case | dtype | factor | jaxmix full | sklearn full | full / factor | "
        "sklearn / factor | sklearn / jaxmix full | compile s (factor, full) | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        name = f"{r['case']} N={r['N']:,} D={r['D']} K={r['K']} q={r['q']}"
        lines.append(
            f"| {name} | {r['dtype']} | {cell(r, 'factor_ms_iter', '.1f')} | "
            f"{cell(r, 'full_ms_iter', '.1f')} | {sklearn_cell(r)} | "
            f"{ratio(r, 'full', 'factor')} | {ratio(r, 'sklearn', 'factor')} | "
            f"{ratio(r, 'sklearn', 'full')} | {r['factor_compile_s']:.1f}, "
            f"{r['full_compile_s']:.1f} | {r['load']} |"
        )
    lines += [
        "",
        "Mean log-likelihood per sample after the fixed iterations (train: at "
        "the last E-step; held-out: at the fitted parameters)",
        "",
        "| case | dtype | iters | factor train | factor held-out | full train | "
        "full held-out | sklearn train | sklearn held-out | generating model "
        "held-out | max Δmeans jaxmix−sklearn |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gap = "—"
        if "sklearn_means" in r:
            gap = f"{np.max(np.abs(r['full_means'] - r['sklearn_means'])):.1e}"
        values = " | ".join(
            cell(r, key, ".3f")
            for key in (
                "factor_train",
                "factor_held_out",
                "full_train",
                "full_held_out",
                "sklearn_train",
                "sklearn_held_out",
                "truth_held_out",
            )
        )
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['iters']} | {values} | {gap} |"
        )
    return "\n".join(lines)


def _sklearn_threads(choice: str) -> tuple:
    """Thread settings to time scikit-learn with (None: its defaults)."""
    if choice == "auto":
        busy = os.getloadavg()[0] > (_machine.cpu_count() or 1) - 0.5
        choice = "1" if busy else "both"
        print(
            f"load {_machine.load()}: scikit-learn with "
            + ("one thread only (busy machine)" if busy else "both thread settings"),
            flush=True,
        )
    return {"both": (1, None), "1": (1,), "default": (None,), "none": ()}[choice]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test sizes: synthetic N=20,000, fewer iterations, one repeat",
    )
    parser.add_argument("--cases", default="digits,synthetic")
    parser.add_argument("--n", type=int, help="synthetic training samples")
    parser.add_argument("--features", type=int, help="synthetic D")
    parser.add_argument("--components", type=int, help="synthetic K")
    parser.add_argument("--factors", type=int, help="q for every case")
    parser.add_argument("--iters", type=int, help="iterations per fit, every case")
    parser.add_argument("--repeats", type=int, help="timed fits per contender")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument(
        "--sklearn-threads",
        choices=("auto", "both", "1", "default", "none"),
        default="auto",
        help="scikit-learn with one BLAS/OpenMP thread, its default threads, "
        "both (the faster is kept), or not at all; auto: both on a quiet "
        "machine, one thread when the load average exceeds the CPUs",
    )
    args = parser.parse_args()

    print("\n".join(machine()), flush=True)
    begin_all = time.perf_counter()
    steal = _machine.Steal().start()
    synthetic = dict(QUICK_SYNTHETIC if args.quick else SYNTHETIC)
    digits = dict(DIGITS)
    for key, value in (
        ("n_samples", args.n),
        ("n_features", args.features),
        ("n_components", args.components),
        ("n_factors", args.factors),
    ):
        if value is not None:
            synthetic[key] = value
    if args.factors is not None:
        digits["n_factors"] = args.factors
    rows = []
    for case in args.cases.split(","):
        if case == "digits":
            problem, shape, reg_covar = digits_problem(), digits, 1e-2
        elif case == "synthetic":
            problem, shape, reg_covar = synthetic_problem(**synthetic), synthetic, 1e-6
        else:
            raise SystemExit(f"unknown case {case!r}: digits or synthetic")
        n_iter = args.iters or (max(3, ITERS[case] // 2) if args.quick else ITERS[case])
        repeats = args.repeats or (1 if args.quick else REPEATS[case])
        sklearn_threads = _sklearn_threads(args.sklearn_threads)
        begin = time.perf_counter()
        start = common_start(
            problem[0], shape["n_components"], shape["n_factors"], reg_covar
        )
        print(
            f"{case}: data {problem[0].shape}, held out {problem[1].shape}, start "
            f"in {time.perf_counter() - begin:.0f} s",
            flush=True,
        )
        for name in args.dtypes.split(","):
            begin = time.perf_counter()
            row = run_case(
                case,
                problem,
                start,
                shape,
                np.dtype(name).type,
                n_iter,
                repeats,
                sklearn_threads,
                reg_covar,
            )
            rows.append(row)
            print(
                f"{case} {name}: factor {row['factor_ms_iter']:.1f} ms/iter, "
                f"jaxmix full {row['full_ms_iter']:.1f} ms/iter"
                + (
                    f", sklearn full {row['sklearn_ms_iter']:.1f} ms/iter"
                    if "sklearn_ms_iter" in row
                    else ""
                )
                + f" ({time.perf_counter() - begin:.0f} s for the case); "
                f"load {row['load']}",
                flush=True,
            )
    steal.stop()
    print(f"\n{time.perf_counter() - begin_all:.0f} s in all; load {_machine.load()}")
    print(steal.line() + "\n")
    print(tables(rows))


if __name__ == "__main__":
    main()
