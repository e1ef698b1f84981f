"""Many fits at once: restarts, stacks of data sets, model selection, compile counts."""

from __future__ import annotations

import functools
import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from threadpoolctl import threadpool_limits

import jaxmix
from jaxmix.engine import batch, em, initialization
from jaxmix.families import Gaussian, GaussianParams

N, D, K = 60, 2, 2
N_SETS = 64
N_ITER = 15
SHARED = dict(method="k-means++", max_iter=N_ITER)  # one compiled shape for many tests


@pytest.fixture(scope="module", autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _mixture_data(rng, n_samples, n_components=K, scale=3.0):
    centres = rng.normal(scale=scale, size=(n_components, D))
    labels = rng.integers(n_components, size=n_samples)
    return centres[labels] + rng.normal(size=(n_samples, D))


def _starts(Xs, rng):
    """Per-data-set starts: two of its samples as means, its covariance, 1/2 weights."""
    starts = []
    for X in Xs:
        means = X[rng.choice(len(X), K, replace=False)]
        cov = np.cov(X.T, bias=True) + 0.1 * np.eye(D)
        starts.append((np.full(K, 1.0 / K), means, np.stack([cov] * K)))
    weights, means, covariances = (
        np.stack(parts) for parts in zip(*starts, strict=True)
    )
    return GaussianParams(weights, means, covariances)


@pytest.fixture(scope="module")
def stack():
    rng = np.random.default_rng(0)
    Xs = np.stack([_mixture_data(rng, N) for _ in range(N_SETS)])
    return Xs, _starts(Xs, rng)


@pytest.fixture(scope="module")
def batched_fit(stack):
    Xs, starts = stack
    family = Gaussian("full")
    return batch.fit_many(
        family, Xs, jax.random.key(0), K, params=starts, tol=0.0, max_iter=N_ITER
    )


def test_batched_fits_equal_fits_one_by_one(stack, batched_fit):
    Xs, starts = stack
    family = Gaussian("full")
    for b in range(N_SETS):
        start = jax.tree.map(lambda leaf, b=b: leaf[b], starts)
        single = jaxmix.fit(family, Xs[b], start, tol=0.0, max_iter=N_ITER)
        np.testing.assert_allclose(
            batched_fit.log_likelihood[b], single.log_likelihood, rtol=1e-10
        )
        for got, want in zip(batched_fit.params, single.params, strict=True):
            np.testing.assert_allclose(got[b], want, rtol=1e-8, atol=1e-10)
        assert batched_fit.n_iter[b] == single.n_iter == N_ITER
        assert batched_fit.status[b] == single.status == em.MAX_ITER


def test_batched_fits_equal_scikit_learn(stack, batched_fit):
    Xs, starts = stack
    for b in range(N_SETS):
        reference = SkGaussianMixture(
            K,
            covariance_type="full",
            tol=0.0,
            max_iter=N_ITER,
            weights_init=starts.weights[b],
            means_init=starts.means[b],
            precisions_init=np.linalg.inv(starts.covariances[b]),
        )
        # One BLAS thread: scikit-learn's threads crawl when the cores are shared.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            reference.fit(Xs[b])
        np.testing.assert_allclose(
            batched_fit.params.weights[b], reference.weights_, rtol=1e-6, atol=1e-9
        )
        np.testing.assert_allclose(
            batched_fit.params.means[b], reference.means_, rtol=1e-6, atol=1e-9
        )
        np.testing.assert_allclose(
            batched_fit.params.covariances[b],
            reference.covariances_,
            rtol=1e-6,
            atol=1e-9,
        )
        np.testing.assert_allclose(
            batched_fit.log_likelihood[b], reference.lower_bound_, rtol=1e-6
        )


@pytest.mark.parametrize("covariance_type", ["tied", "diag", "spherical"])
def test_other_covariance_types_equal_scikit_learn(stack, covariance_type):
    Xs, starts = stack
    Xs = Xs[:8]
    covariances = {
        "tied": starts.covariances[:8, 0],
        "diag": np.diagonal(starts.covariances[:8], axis1=-2, axis2=-1),
        "spherical": np.diagonal(starts.covariances[:8], axis1=-2, axis2=-1).mean(-1),
    }[covariance_type]
    params = GaussianParams(starts.weights[:8], starts.means[:8], covariances)
    result = batch.fit_many(
        Gaussian(covariance_type),
        Xs,
        jax.random.key(0),
        K,
        params=params,
        tol=0.0,
        max_iter=N_ITER,
    )
    for b in range(len(Xs)):
        reference = SkGaussianMixture(
            K,
            covariance_type=covariance_type,
            tol=0.0,
            max_iter=N_ITER,
            weights_init=params.weights[b],
            means_init=params.means[b],
            precisions_init=(
                np.linalg.inv(covariances[b])
                if covariance_type == "tied"
                else 1 / covariances[b]
            ),
        )
        # One BLAS thread: scikit-learn's threads crawl when the cores are shared.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            reference.fit(Xs[b])
        np.testing.assert_allclose(result.params.means[b], reference.means_, rtol=1e-6)
        np.testing.assert_allclose(
            result.params.covariances[b], reference.covariances_, rtol=1e-6
        )
        np.testing.assert_allclose(
            result.log_likelihood[b], reference.lower_bound_, rtol=1e-6
        )


# -- ragged data sets ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ragged():
    rng = np.random.default_rng(1)
    lengths = [40, 60, 25, 60, 40, 25]
    datasets = [_mixture_data(rng, n) for n in lengths]
    return datasets, _starts(datasets, rng)


def test_pad_datasets_shapes_and_mask(ragged):
    datasets, _ = ragged
    Xs, weights = batch.pad_datasets(datasets)
    assert Xs.shape == (len(datasets), 60, D) and Xs.dtype == np.float64
    for b, X in enumerate(datasets):
        np.testing.assert_array_equal(Xs[b, : len(X)], X)
        np.testing.assert_array_equal(weights[b], np.arange(60) < len(X))
    given = [np.full(len(X), 2.0) for X in datasets]
    _, weights = batch.pad_datasets(datasets, given)
    np.testing.assert_array_equal(weights.sum(1), [2.0 * len(X) for X in datasets])


def test_padded_ragged_fits_equal_unpadded_single_fits(ragged):
    datasets, starts = ragged
    family = Gaussian("full")
    Xs, weights = batch.pad_datasets(datasets)
    result = batch.fit_many(
        family,
        Xs,
        jax.random.key(0),
        K,
        sample_weight=weights,
        params=starts,
        tol=0.0,
        max_iter=N_ITER,
    )
    for b, X in enumerate(datasets):
        start = jax.tree.map(lambda leaf, b=b: leaf[b], starts)
        single = jaxmix.fit(family, X, start, tol=0.0, max_iter=N_ITER)
        assert int(result.n_iter[b]) == int(single.n_iter)
        np.testing.assert_allclose(
            result.log_likelihood[b], single.log_likelihood, rtol=1e-10
        )
        for got, want in zip(result.params, single.params, strict=True):
            np.testing.assert_allclose(got[b], want, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("method", initialization.INIT_METHODS)
def test_padding_values_do_not_matter(ragged, method):
    """Zero-weight rows change neither the initialisation nor the fit.

    Padding once with far-away points and once with copies of a sample, the
    same key gives the same fits: the k-means++ draws (∝ weight), the
    random_from_data draws and the Lloyd iterations ignore the padded rows.
    """
    datasets, _ = ragged
    Xs, weights = batch.pad_datasets(datasets)
    far = np.where(weights[..., None] > 0, Xs, 1e3)
    family = Gaussian("full")
    fits = [
        batch.fit_many(
            family,
            data,
            jax.random.key(3),
            K,
            sample_weight=weights,
            method=method,
            max_iter=N_ITER,
        )
        for data in (Xs, far)
    ]
    for got, want in zip(fits[0].params, fits[1].params, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_kmeans_plusplus_never_picks_padded_rows():
    rng = np.random.default_rng(2)
    n_real, n_padded = 12, 40
    X = np.concatenate([_mixture_data(rng, n_real), np.full((n_padded, D), 50.0)])
    weights = np.r_[np.ones(n_real), np.zeros(n_padded)]
    keys = jax.random.split(jax.random.key(0), 64)
    seeds = jax.jit(
        jax.vmap(
            lambda key, X: initialization.kmeans_plusplus(key, X, 5, weights)[1],
            (0, None),
        )
    )
    indices = np.asarray(seeds(keys, X))
    assert indices.max() < n_real
    # Only three distinct real points: after them the distances are all zero and
    # the draw falls back to the weights, still never to a padded row.
    X[:n_real] = X[np.arange(n_real) % 3]
    indices = np.asarray(seeds(keys, X))
    assert indices.max() < n_real


def test_random_from_data_draws_only_weighted_rows():
    rng = np.random.default_rng(3)
    X = np.concatenate([_mixture_data(rng, 10), np.full((30, D), -50.0)])
    weights = np.r_[np.ones(10), np.zeros(30)]
    keys = jax.random.split(jax.random.key(1), 50)
    means = jax.vmap(
        lambda key: (
            jaxmix.initialize(
                Gaussian("diag"), key, X, 3, "random_from_data", weights
            ).means
        )
    )(keys)
    distance = np.abs(np.asarray(means)[:, :, None, :] - X[None, None, :10])
    assert np.all(distance.sum(-1).min(-1) < 1e-12)


# -- restarts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_optima():
    """Five well-separated clusters of unequal sizes: K=5 fits have local optima."""
    rng = np.random.default_rng(4)
    centres = np.array([[0, 0], [6, 0], [0, 6], [6, 6], [3, 12]], float)
    sizes = [80, 40, 20, 60, 30]
    return np.concatenate(
        [c + rng.normal(size=(n, D)) for c, n in zip(centres, sizes, strict=True)]
    )


def test_best_restart_is_never_worse_than_any_single_restart(local_optima):
    X = local_optima
    family = Gaussian("full")
    n_init = 8
    key = jax.random.key(5)
    result = batch.fit_restarts(
        family, X, key, 5, n_init, method="random_from_data", max_iter=60
    )
    singles = []
    for restart_key in jax.random.split(key, n_init):
        start = jaxmix.initialize(family, restart_key, X, 5, "random_from_data")
        singles.append(jaxmix.fit(family, X, start, max_iter=60))
    single_ll = np.array([float(s.log_likelihood) for s in singles])
    np.testing.assert_allclose(result.all.log_likelihood, single_ll, rtol=1e-9)
    assert np.all(result.best.log_likelihood >= single_ll - 1e-12)
    assert len(np.unique(single_ll.round(6))) > 1  # the data has local optima
    best = singles[int(result.best_index)]
    np.testing.assert_allclose(result.best.params.means, best.params.means, rtol=1e-8)
    # Restarts in groups of three (3 + 3 + 2, one group after another).
    grouped = batch.fit_restarts(
        family,
        X,
        key,
        5,
        n_init,
        method="random_from_data",
        max_iter=60,
        batch_size=3,
    )
    np.testing.assert_allclose(grouped.all.log_likelihood, single_ll, rtol=1e-9)
    assert int(grouped.best_index) == int(result.best_index)
    # The restarts run one by one choose the same restart too.
    one_by_one = jax.tree.map(lambda *leaves: jnp.stack(leaves), *singles)
    assert int(batch.select_best(one_by_one)[1]) == int(result.best_index)


def _scored_results(log_likelihood, status=None) -> em.FitResult:
    """Restarts that differ only in their final objective (and status)."""
    n = len(log_likelihood)
    status = jnp.full(n, em.CONVERGED) if status is None else jnp.asarray(status)
    return em.FitResult(
        params=GaussianParams(
            jnp.zeros((n, 1)), jnp.zeros((n, 1, 1)), jnp.zeros((n, 1, 1, 1))
        ),
        log_likelihood=jnp.asarray(log_likelihood),
        n_iter=jnp.ones(n, int),
        converged=status == em.CONVERGED,
        status=status,
        trace=jnp.zeros((n, 1)),
    )


def test_non_finite_restart_is_never_chosen():
    status = jnp.array([em.MAX_ITER, em.NONFINITE, em.CONVERGED, em.NONFINITE])
    results = _scored_results(jnp.array([-3.0, 10.0, -2.0, jnp.nan]), status)
    _, index = batch.select_best(results)
    assert int(index) == 2
    nothing = _scored_results(jnp.array([jnp.nan, 1.0]), [em.MAX_ITER, em.NONFINITE])
    assert int(batch.select_best(nothing)[1]) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_restarts_tied_up_to_rounding_choose_the_first(dtype):
    # The same four restarts as two differently batched programs may round
    # their final objectives: within a few ulps of each other, the largest in
    # a different place. A plain argmax picks restart 1 in one and 2 in the
    # other; the rule (ties within 128 ulps, the first wins) picks 0 in both,
    # while a restart better by more than the tolerance still wins.
    best = np.asarray(-2.3, dtype)

    def ulps(n):  # n ulps above (n > 0) or below best
        value = best
        for _ in range(abs(n)):
            value = np.nextafter(value, np.asarray(np.sign(n) * np.inf, dtype))
        return value

    runs = ([ulps(-2), best, ulps(-1), ulps(-5000)], [ulps(-1), ulps(-2), best, best])
    for scores in runs:
        results = _scored_results(np.array(scores, dtype))
        assert int(batch.select_best(results)[1]) == 0
    clearly_better = _scored_results(np.array([best, ulps(-1), ulps(400)], dtype))
    assert int(batch.select_best(clearly_better)[1]) == 2
    # Relative to the score's size: K-means passes minus an inertia, of any scale.
    big = np.asarray(1e6, dtype)
    inertia = np.array([big, np.nextafter(big, np.asarray(0, dtype)), 2 * big])
    results = _scored_results(np.zeros(3, dtype))
    assert int(batch.select_best(results, score=-jnp.asarray(inertia))[1]) == 0
    assert int(batch.select_best(results, score=jnp.asarray(-inertia[::-1]))[1]) == 1


def test_same_starts_choose_the_same_restart_however_batched(local_optima):
    # Six starts that are one start with its components permuted and nudged
    # reach one optimum, so their objectives tie up to round-off, which
    # differs between the program that fits them vmapped, in groups, or one
    # by one (float32: ulps of 1e-7). Every way, restart 0 is chosen.
    X = jnp.asarray(local_optima, jnp.float32)
    family = Gaussian("full")
    start = jaxmix.initialize(family, jax.random.key(9), X, 3)
    nudge = np.random.default_rng(0).normal(scale=1e-3, size=(6, 3, D))
    orders = np.array(list(itertools.permutations(range(3))))
    starts = GaussianParams(
        start.weights[orders],
        start.means[orders] + nudge.astype(np.float32),
        start.covariances[orders],
    )
    fit = functools.partial(
        batch.fit_starts_jit, family, X, tol=0.0, sample_weight=None, max_iter=40
    )
    vmapped = fit(starts)
    grouped = fit(starts, batch_size=4)
    one_by_one = [
        fit(jax.tree.map(lambda leaf, r=r: leaf[r : r + 1], starts)) for r in range(6)
    ]
    one_by_one = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *one_by_one)
    for results in (vmapped, grouped, one_by_one):
        scores = np.asarray(results.log_likelihood)
        np.testing.assert_allclose(scores, scores[0], rtol=1e-6)  # one optimum
        assert int(batch.select_best(results)[1]) == 0


def test_fit_many_with_restarts_equals_fit_restarts(stack):
    Xs = stack[0][:4]
    key = jax.random.key(6)
    result = batch.fit_many(Gaussian("full"), Xs, key, K, n_init=3, **SHARED)
    for b, dataset_key in enumerate(jax.random.split(key, len(Xs))):
        single = batch.fit_restarts(
            Gaussian("full"), Xs[b], dataset_key, K, 3, **SHARED
        )
        np.testing.assert_allclose(
            result.log_likelihood[b], single.best.log_likelihood, rtol=1e-10
        )
        np.testing.assert_allclose(
            result.params.means[b], single.best.params.means, rtol=1e-8
        )


def test_batch_size_slices_give_the_same_fits(stack):
    Xs = stack[0][:20]
    whole = batch.fit_many(Gaussian("full"), Xs, jax.random.key(7), K, **SHARED)
    sliced = batch.fit_many(
        Gaussian("full"), Xs, jax.random.key(7), K, batch_size=8, **SHARED
    )
    for got, want in zip(jax.tree.leaves(sliced), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10)


# -- model selection -----------------------------------------------------------------


def _sklearn_bic(X, params, covariance_type):
    """scikit-learn's BIC for given parameters (an unfitted model filled in)."""
    reference = SkGaussianMixture(len(params.weights), covariance_type=covariance_type)
    reference.weights_ = np.asarray(params.weights)
    reference.means_ = np.asarray(params.means)
    reference.covariances_ = np.asarray(params.covariances)
    covariances = reference.covariances_
    if covariance_type in ("full", "tied"):
        cholesky = np.linalg.cholesky(np.linalg.inv(covariances))
    else:
        cholesky = 1 / np.sqrt(covariances)
    reference.precisions_cholesky_ = cholesky
    return reference.bic(X)


def _marked_rows(table: str) -> list[tuple[str, int]]:
    """(model, K) of the rows of a sweep's table that end with the mark ``*``."""
    rows = [line.split() for line in table.splitlines()[1:]]
    return [(row[0], int(row[1])) for row in rows if row[-1] == "*"]


def test_sweep_equals_separate_fits_and_picks_their_bic_best(local_optima):
    X = local_optima
    family = Gaussian("full")
    key = jax.random.key(8)
    max_components, n_init = 3, 2
    sweep = batch.select_n_components(
        family, X, key, max_components, n_init=n_init, method="k-means++", max_iter=60
    )
    bics = []
    for k, size_key in enumerate(jax.random.split(key, max_components), start=1):
        separate = batch.fit_restarts(
            family, X, size_key, k, n_init, method="k-means++", max_iter=60
        )
        # Restarts that reach the same optimum tie up to round-off, and the
        # tie goes to the first of them however the fits were batched.
        chosen = int(sweep.best_restart[0, k - 1])
        assert chosen == int(separate.best_index)
        want = jax.tree.map(lambda leaf, r=chosen: leaf[r], separate.all)
        masked = sweep.model(None, k)
        assert masked.params.weights.shape == (k,)
        assert int(masked.n_iter) == int(want.n_iter)
        np.testing.assert_allclose(
            masked.log_likelihood, separate.best.log_likelihood, rtol=1e-9
        )
        for got, expected in zip(masked.params, want.params, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-10)
        bics.append(_sklearn_bic(X, want.params, "full"))
    np.testing.assert_allclose(sweep.bic[0], bics, rtol=1e-9)
    assert sweep.best_n_components == 1 + int(np.argmin(bics))
    assert sweep.best.params.means.shape == (sweep.best_n_components, D)
    # The table marks exactly the row of lowest BIC (not the largest K, the
    # highest likelihood, or every row of the winning family).
    assert _marked_rows(sweep.table()) == [("full", 1 + int(np.argmin(bics)))]


def test_sweep_over_covariance_types_picks_the_lowest_bic(local_optima):
    X = local_optima
    names = ("diag", "spherical")
    sweep = batch.select_n_components(
        Gaussian(),
        X,
        jax.random.key(9),
        2,
        covariance_types=names,
        method="k-means++",
        max_iter=60,
    )
    bics = np.array(
        [
            [_sklearn_bic(X, sweep.model(name, k).params, name) for k in (1, 2)]
            for name in names
        ]
    )
    np.testing.assert_allclose(sweep.bic, bics, rtol=1e-9)
    t, j = np.unravel_index(np.argmin(bics), bics.shape)
    assert sweep.best_family.covariance_type == names[t]
    assert sweep.best_n_components == j + 1
    assert _marked_rows(sweep.table()) == [(names[t], j + 1)]
    with pytest.raises(ValueError, match="covariance_type"):
        batch.select_n_components(
            jaxmix.families.Bernoulli(), X, jax.random.key(0), 2, covariance_types=names
        )


def test_masked_components_stay_out_of_the_fit(local_optima):
    """A start whose last components have weight exactly 0 fits like the small model."""
    X = local_optima
    family = Gaussian("full")
    small = jaxmix.initialize(family, jax.random.key(9), X, 3)
    padded = GaussianParams(
        jnp.concatenate([small.weights, jnp.zeros(2)]),
        jnp.concatenate([small.means, jnp.full((2, D), 3.0)]),
        jnp.concatenate([small.covariances, jnp.stack([jnp.eye(D)] * 2)]),
    )
    want = jaxmix.fit(family, X, small, max_iter=60)
    got = jaxmix.fit(family, X, padded, max_iter=60)
    np.testing.assert_array_equal(got.params.weights[3:], 0.0)
    assert int(got.n_iter) == int(want.n_iter)
    np.testing.assert_allclose(got.log_likelihood, want.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(got.params.means[:3], want.params.means, rtol=1e-10)
    np.testing.assert_allclose(got.params.weights[:3], want.params.weights, rtol=1e-10)


# -- compile discipline --------------------------------------------------------------


def test_new_data_tol_reg_covar_and_priors_do_not_recompile(stack):
    Xs = stack[0]
    X = Xs[0]
    key = jax.random.key(10)
    batch.fit_restarts(Gaussian("full"), X, key, K, 3, tol=1e-3, **SHARED)
    before = batch.initialize_and_fit_jit._cache_size()
    batch.fit_restarts(Gaussian("full"), Xs[1], key, K, 3, tol=1e-3, **SHARED)
    batch.fit_restarts(Gaussian("full"), X, jax.random.key(11), K, 3, tol=0.5, **SHARED)
    batch.fit_restarts(Gaussian("full", reg_covar=0.1), X, key, K, 3, **SHARED)
    assert batch.initialize_and_fit_jit._cache_size() == before
    batch.fit_restarts(
        Gaussian("full", weight_concentration=2.0), X, key, K, 3, **SHARED
    )
    with_prior = batch.initialize_and_fit_jit._cache_size()
    batch.fit_restarts(
        Gaussian("full", weight_concentration=5.0), X, key, K, 3, **SHARED
    )
    assert batch.initialize_and_fit_jit._cache_size() == with_prior
    # A static argument does recompile (the counter counts).
    batch.fit_restarts(Gaussian("full"), X, key, K, 2, **SHARED)
    assert batch.initialize_and_fit_jit._cache_size() == with_prior + 1

    batch.fit_many(Gaussian("full"), Xs[:20], key, K, batch_size=8, **SHARED)
    before = batch._many_from_keys_jit._cache_size()
    batch.fit_many(
        Gaussian("full"), Xs[20:40], key, K, batch_size=8, tol=1e-2, **SHARED
    )
    batch.fit_many(
        Gaussian("full", reg_covar=1e-3), Xs[:20], key, K, batch_size=8, **SHARED
    )
    batch.fit_many(Gaussian("full"), Xs[:13], key, K, batch_size=8, **SHARED)
    assert batch._many_from_keys_jit._cache_size() == before


# -- estimator -----------------------------------------------------------------------


def test_estimator_fit_many_equals_single_fits(ragged):
    datasets, starts = ragged
    settings = dict(
        tol=1e-6,
        max_iter=40,
        weights_init=starts.weights[0],
        means_init=starts.means[0],
        precisions_init=np.linalg.inv(starts.covariances[0]),
    )
    singles = []
    for X in datasets:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            singles.append(jaxmix.GaussianMixture(K, **settings).fit(X))
        # A fit warns that it did not converge exactly when it did not.
        warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
        assert warned == (not singles[-1].converged_)
    unconverged = sum(not single.converged_ for single in singles)
    assert unconverged > 0  # the stack's warning is exercised
    # fit_many warns once for the stack, counting the fits that did not converge.
    model = jaxmix.GaussianMixture(K, **settings)
    message = f"^{unconverged} of {len(datasets)} fits did not converge"
    with pytest.warns(ConvergenceWarning, match=message):
        fitted = model.fit_many(datasets)
    assert len(fitted) == len(datasets)
    assert fitted.means_.shape == (len(datasets), K, D)
    for b, (X, single) in enumerate(zip(datasets, singles, strict=True)):
        np.testing.assert_allclose(fitted.means_[b], single.means_, rtol=1e-7)
        np.testing.assert_allclose(
            fitted.covariances_[b], single.covariances_, rtol=1e-7
        )
        np.testing.assert_allclose(
            fitted.lower_bound_[b], single.lower_bound_, rtol=1e-10
        )
        assert fitted.n_iter_[b] == single.n_iter_
        assert fitted.converged_[b] == single.converged_
        np.testing.assert_allclose(
            fitted[b].predict_proba(X), single.predict_proba(X), rtol=1e-6, atol=1e-12
        )


def test_estimator_fit_many_bad_input():
    model = jaxmix.GaussianMixture(3)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same number of features"):
        model.fit_many([rng.normal(size=(10, 2)), rng.normal(size=(10, 3))])
    with pytest.raises(ValueError, match="n_components"):
        model.fit_many([rng.normal(size=(10, 2)), rng.normal(size=(2, 2))])
    with pytest.raises(ValueError, match="NaN"):
        model.fit_many([np.full((10, 2), np.nan)])
    with pytest.raises(ValueError, match="non-empty"):
        model.fit_many([])
    with pytest.raises(ValueError, match="shape"):
        batch.fit_many(Gaussian(), rng.normal(size=(10, 2)), jax.random.key(0), 2)
    with pytest.raises(ValueError, match="positive weight"):
        batch.fit_many(
            Gaussian(),
            rng.normal(size=(2, 10, 2)),
            jax.random.key(0),
            3,
            sample_weight=np.r_[np.ones(2), np.zeros(8)][None].repeat(2, 0),
        )


def test_bernoulli_family_batches_too():
    rng = np.random.default_rng(5)
    prototypes = rng.uniform(size=(2, 6))
    Xs = rng.uniform(size=(5, 40, 6)) < prototypes[rng.integers(2, size=(5, 40))]
    Xs = Xs.astype(np.float64)
    family = jaxmix.families.Bernoulli()
    result = batch.fit_many(
        family, Xs, jax.random.key(0), 2, method="random", max_iter=30
    )
    for b, dataset_key in enumerate(jax.random.split(jax.random.key(0), len(Xs))):
        start = jaxmix.initialize(
            family, jax.random.split(dataset_key, 1)[0], Xs[b], 2, "random"
        )
        single = jaxmix.fit(family, Xs[b], start, max_iter=30)
        np.testing.assert_allclose(
            result.params.means[b], single.params.means, rtol=1e-8, atol=1e-12
        )
        np.testing.assert_allclose(
            result.log_likelihood[b], single.log_likelihood, rtol=1e-10
        )


def test_laplace_hard_em_batches_with_padding():
    """K-medians (hard EM of a Laplace family) on padded ragged data sets."""
    from jaxmix.families import laplace

    rng = np.random.default_rng(6)
    datasets = [
        rng.laplace(size=(n, D)) + 4.0 * rng.integers(3, size=(n, 1))
        for n in (30, 40, 30, 40)
    ]
    Xs, weights = batch.pad_datasets(datasets)
    starts = laplace.LaplaceParams(
        np.full((4, 3), 1 / 3), np.stack([X[:3] for X in datasets]), np.ones((4, 3))
    )
    family = laplace.Laplace()
    loop = dict(hard=True, tol=0.0, criterion="means", max_iter=20)
    result = batch.fit_many(
        family, Xs, jax.random.key(0), 3, sample_weight=weights, params=starts, **loop
    )
    for b, X in enumerate(datasets):
        start = jax.tree.map(lambda leaf, b=b: leaf[b], starts)
        single = jaxmix.fit(family, X, start, **loop)
        np.testing.assert_allclose(
            result.params.means[b], single.params.means, rtol=1e-10
        )
        assert int(result.n_iter[b]) == int(single.n_iter)
