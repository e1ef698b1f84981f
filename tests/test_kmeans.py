"""KMeans and KMedians: scikit-learn, a numpy K-medians, and the σ² → 0 limit."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import real_datasets
from sklearn.cluster import KMeans as SkKMeans
from sklearn.exceptions import ConvergenceWarning

import jaxmix
from jaxmix.engine import em
from jaxmix.estimators.kmeans import KMeans, KMedians
from jaxmix.families import Gaussian, GaussianParams
from jaxmix.families.isotropic import IsotropicGaussian
from jaxmix.families.laplace import Laplace, LaplaceParams, sort_order

DATA = real_datasets()
SKLEARN_CASES = {"iris": 4, "wine": 5, "breast_cancer": 6, "digits": 10}


@pytest.fixture(autouse=True, scope="module")
def _x64():
    with jax.enable_x64(True):
        yield


def standardized(name: str) -> np.ndarray:
    # The raw data sit on decimal or integer grids, where samples exactly
    # equidistant from two centres are common; which centre wins such a tie
    # depends on the round-off of each BLAS library. Standardized, they are not.
    X = DATA[name].astype(np.float64)
    scale = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def start(X: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return X[rng.choice(len(X), n_clusters, replace=False)]


# -- K-means against scikit-learn -------------------------------------------------
@pytest.mark.parametrize("tol", [0.0, 1e-4])
@pytest.mark.parametrize("name", sorted(SKLEARN_CASES))
def test_kmeans_matches_scikit_learn(name, tol):
    X = standardized(name)
    n_clusters = SKLEARN_CASES[name]
    centres = start(X, n_clusters)
    theirs = SkKMeans(
        n_clusters, algorithm="lloyd", n_init=1, init=centres, tol=tol
    ).fit(X)
    ours = KMeans(n_clusters, init=centres, tol=tol).fit(X)
    assert ours.cluster_centers_.dtype == np.float64
    np.testing.assert_allclose(
        ours.cluster_centers_, theirs.cluster_centers_, rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)


def test_empty_cluster_is_reseeded_like_scikit_learn():
    # A centre far from every sample gets none; both re-seed it at the sample
    # farthest from its centre, which leaves its own cluster.
    X = standardized("iris")
    centres = start(X, 4)
    centres[2] = 100.0
    theirs = SkKMeans(4, algorithm="lloyd", n_init=1, init=centres, tol=0).fit(X)
    ours = KMeans(4, init=centres, tol=0).fit(X)
    np.testing.assert_allclose(
        ours.cluster_centers_, theirs.cluster_centers_, atol=1e-9
    )
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)


def test_kmeans_methods_against_numpy():
    X = standardized("wine")
    model = KMeans(5, n_init=3, random_state=0).fit(X)
    centres = model.cluster_centers_
    distances = np.linalg.norm(X[:, None, :] - centres[None], axis=-1)
    np.testing.assert_allclose(model.transform(X), distances, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(model.predict(X), distances.argmin(axis=1))
    np.testing.assert_array_equal(model.labels_, distances.argmin(axis=1))
    inertia = np.sum(distances.min(axis=1) ** 2)
    assert model.inertia_ == pytest.approx(inertia, rel=1e-10)
    assert model.score(X) == pytest.approx(-inertia, rel=1e-10)
    # The kept restart is a fixed point of Lloyd's iteration.
    means = np.stack([X[model.labels_ == k].mean(axis=0) for k in range(5)])
    np.testing.assert_allclose(centres, means, atol=1e-6)
    assert set(model.get_params()) == {
        "n_clusters",
        "init",
        "n_init",
        "max_iter",
        "tol",
        "random_state",
        "device_budget",
    }


@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_kmeans_sample_weight_matches_scikit_learn(tol):
    # Real-valued weights, from the same initial centres: the weighted means,
    # the weighted inertia and the stopping rule (whose tolerance scales with
    # the unweighted variance in scikit-learn) must all match. Catches weights
    # ignored in the M-step, in the inertia, or in the tolerance's variance.
    X = standardized("wine")
    weights = np.random.default_rng(3).uniform(0.1, 3.0, len(X))
    centres = start(X, 5)
    theirs = SkKMeans(5, algorithm="lloyd", n_init=1, init=centres, tol=tol)
    theirs.fit(X, sample_weight=weights)
    ours = KMeans(5, init=centres, tol=tol).fit(X, sample_weight=weights)
    np.testing.assert_allclose(
        ours.cluster_centers_, theirs.cluster_centers_, rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)
    unweighted = SkKMeans(5, algorithm="lloyd", n_init=1, init=centres, tol=tol)
    assert not np.allclose(unweighted.fit(X).cluster_centers_, ours.cluster_centers_)


@pytest.mark.parametrize("estimator", [KMeans, KMedians])
def test_init_array_with_several_restarts_warns_and_fits_once(estimator):
    X = standardized("iris")
    centres = start(X, 3)
    with pytest.warns(RuntimeWarning, match="performing only one init"):
        several = estimator(3, init=centres, n_init=3).fit(X)
    once = estimator(3, init=centres).fit(X)
    np.testing.assert_array_equal(several.cluster_centers_, once.cluster_centers_)
    assert several.inertia_ == once.inertia_


def test_more_restarts_never_worse():
    X = standardized("wine")
    one = KMeans(6, init="random", n_init=1, random_state=3).fit(X)
    many = KMeans(6, init="random", n_init=8, random_state=3).fit(X)
    # The restarts' keys come from the same generator: restart 0 is shared.
    assert many.inertia_ <= one.inertia_ + 1e-9


@pytest.mark.parametrize("estimator", [KMeans, KMedians])
def test_integer_sample_weight_equals_repeated_samples(estimator):
    X = standardized("iris")
    counts = np.random.default_rng(1).integers(0, 4, size=len(X))
    centres = start(X[counts > 0], 3, seed=2)
    weighted = estimator(3, init=centres, tol=0).fit(X, sample_weight=counts)
    repeated = estimator(3, init=centres, tol=0).fit(np.repeat(X, counts, axis=0))
    np.testing.assert_allclose(
        weighted.cluster_centers_, repeated.cluster_centers_, atol=1e-10
    )
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-10)


@pytest.mark.parametrize("estimator", [KMeans, KMedians])
def test_float32_stays_float32(estimator):
    X = standardized("iris")
    centres = start(X, 3)
    double = estimator(3, init=centres).fit(X)
    single = estimator(3, init=centres.astype(np.float32)).fit(X.astype(np.float32))
    assert single.cluster_centers_.dtype == np.float32
    assert single.transform(X.astype(np.float32)).dtype == np.float32
    # float32 round-off (~1e-7 relative) on data of unit scale.
    np.testing.assert_allclose(
        single.cluster_centers_, double.cluster_centers_, atol=1e-5
    )


# -- K-medians against a float64 numpy reference ---------------------------------
def kmedians_reference(X, centres, weights, max_iter=300):
    """Plain numpy K-medians: L1 assignment (first on ties), lower weighted medians."""
    centres = centres.copy()
    for iteration in range(1, max_iter + 1):
        labels = np.abs(X[:, None, :] - centres[None]).sum(axis=-1).argmin(axis=1)
        new = centres.copy()
        for k in range(len(centres)):
            members = labels == k
            assert members.any(), "the reference does not re-seed empty clusters"
            for d in range(X.shape[1]):
                order = np.argsort(X[members, d], kind="stable")
                values = X[members, d][order]
                cumulative = np.cumsum(weights[members][order])
                new[k, d] = values[np.searchsorted(cumulative, cumulative[-1] / 2)]
        if np.array_equal(new, centres):
            return new, labels, iteration
        centres = new
    labels = np.abs(X[:, None, :] - centres[None]).sum(axis=-1).argmin(axis=1)
    return centres, labels, max_iter


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer"])
def test_kmedians_matches_numpy_reference(name, weighted):
    X = standardized(name)
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 2.0, len(X)) if weighted else np.ones(len(X))
    centres = start(X, 4)
    expected, labels, n_iter = kmedians_reference(X, centres, weights)
    model = KMedians(4, init=centres).fit(X, sample_weight=weights)
    np.testing.assert_array_equal(model.cluster_centers_, expected)
    np.testing.assert_array_equal(model.labels_, labels)
    assert model.n_iter_ == n_iter
    l1 = np.abs(X - expected[labels]).sum(axis=1)
    assert model.inertia_ == pytest.approx(weights @ l1, rel=1e-12)
    assert model.score(X, sample_weight=weights) == pytest.approx(
        -weights @ l1, rel=1e-12
    )


def kmedians_tol_reference(X, centres, tol, max_iter=300):
    """Numpy K-medians with the centre-shift rule: stop once Σ_k ‖Δc_k‖² ≤ tol.

    ``tol`` is absolute (the estimator's tol × the mean feature variance).
    Returns the centres after the stopping iteration, the labels of those
    centres, the iteration count and the shift of every iteration.
    """
    shifts = []
    while len(shifts) < max_iter:
        labels = np.abs(X[:, None, :] - centres[None]).sum(axis=-1).argmin(axis=1)
        new = np.stack(
            [
                # the lower median of each feature (unit weights)
                np.sort(X[labels == k], axis=0)[((labels == k).sum() - 1) // 2]
                for k in range(len(centres))
            ]
        )
        shifts.append(np.sum((new - centres) ** 2))
        centres = new
        if shifts[-1] <= tol:
            break
    labels = np.abs(X[:, None, :] - centres[None]).sum(axis=-1).argmin(axis=1)
    return centres, labels, len(shifts), np.array(shifts)


def test_kmedians_tol_stops_on_the_centre_shift():
    # With tol > 0 the fit stops at the first iteration whose centre shift is
    # at most tol × the mean variance (9 here), before the fixed point that
    # tol=0 runs to (iteration 7 of 10); ignoring tol, comparing the shift
    # with the unscaled tol, or testing the previous iteration's shift would
    # stop elsewhere.
    X = 3.0 * standardized("wine")
    centres = start(X, 4)
    tol = 0.15
    scaled = tol * np.var(X, axis=0).mean()
    expected, labels, n_iter, shifts = kmedians_tol_reference(X, centres, scaled)
    exact = KMedians(4, init=centres).fit(X)
    assert n_iter < exact.n_iter_  # tol matters here
    # No shift lies near the threshold, where round-off could decide.
    assert np.all(np.abs(shifts - scaled) > 1e-3 * scaled)
    model = KMedians(4, init=centres, tol=tol).fit(X)
    assert model.n_iter_ == n_iter
    np.testing.assert_array_equal(model.cluster_centers_, expected)
    np.testing.assert_array_equal(model.labels_, labels)
    l1 = np.abs(X - expected[labels]).sum()
    assert model.inertia_ == pytest.approx(l1, rel=1e-12)


def test_kmedians_fit_transform_is_fit_then_transform():
    X = standardized("iris")
    centres = start(X, 3)
    distances = KMedians(3, init=centres).fit_transform(X)
    model = KMedians(3, init=centres).fit(X)
    np.testing.assert_array_equal(distances, model.transform(X))
    l1 = np.abs(X[:, None, :] - model.cluster_centers_[None]).sum(axis=-1)
    np.testing.assert_allclose(distances, l1, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(distances.argmin(axis=1), model.labels_)


def test_kmedians_warns_when_max_iter_comes_before_a_fixed_point():
    X = standardized("wine")
    centres = start(X, 4)
    with pytest.warns(ConvergenceWarning, match="before reaching a fixed point"):
        model = KMedians(4, init=centres, max_iter=2).fit(X)
    assert model.n_iter_ == 2
    # With tol > 0 it stops on the centre shift, as K-means does, and like
    # K-means (and scikit-learn's) it does not warn at max_iter.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KMedians(4, init=centres, max_iter=2, tol=1e-4).fit(X)


def assert_kmedians_fixed_point(X, model, weights):
    centres, labels = model.cluster_centers_, model.labels_
    l1 = np.abs(X[:, None, :] - centres[None]).sum(axis=-1)
    # Every sample is with a nearest centre in L1 ...
    assert np.all(l1[np.arange(len(X)), labels] <= l1.min(axis=1) + 1e-9)
    # ... and every centre is a weighted median of its samples, feature by
    # feature: at most half the weight lies strictly below it, and at most
    # half strictly above (any median, whatever the convention for even counts).
    for k in np.unique(labels):
        members, w = X[labels == k], weights[labels == k]
        half = w.sum() / 2 + 1e-9
        below = (members < centres[k]).T @ w
        above = (members > centres[k]).T @ w
        assert np.all(below <= half) and np.all(above <= half), k


@pytest.mark.parametrize("name,n_clusters", [("digits", 10), ("wine", 3)])
def test_kmedians_is_a_fixed_point_on_raw_data(name, n_clusters):
    X = DATA[name].astype(np.float64)
    model = KMedians(n_clusters, n_init=2, random_state=0).fit(X)
    assert_kmedians_fixed_point(X, model, np.ones(len(X)))
    l1 = np.abs(X - model.cluster_centers_[model.labels_]).sum()
    assert model.inertia_ == pytest.approx(l1, rel=1e-12)
    assert model.score(X) == pytest.approx(-l1, rel=1e-12)
    np.testing.assert_allclose(
        model.transform(X[:5]),
        np.abs(X[:5, None] - model.cluster_centers_[None]).sum(-1),
    )


# -- the engine's hard mode ------------------------------------------------------
@pytest.mark.parametrize("family", [IsotropicGaussian(), Laplace()])
def test_hard_statistics_equal_statistics_of_one_hot(family):
    X = jnp.asarray(standardized("iris"))
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 3, len(X)))
    weights = jnp.asarray(np.random.default_rng(1).uniform(0, 2, len(X)))
    params = LaplaceParams if isinstance(family, Laplace) else GaussianParams
    params = params(jnp.array([0.2, 0.3, 0.5]), X[:3], jnp.array([0.5, 1.0, 2.0]))
    log_joint = jnp.take_along_axis(
        em.log_joint(family, params, X), labels[:, None], axis=1
    )[:, 0]
    resp = jax.nn.one_hot(labels, 3, dtype=X.dtype) * weights[:, None]
    direct = family.hard_statistics(params, X, labels, weights, log_joint)
    via_resp = family.statistics(params, X, resp)
    for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(via_resp), strict=True):
        # The costs come from the E-step's expansion on one side and from
        # direct differences on the other: equal up to round-off.
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_soft_em_tends_to_lloyd_as_variance_shrinks():
    X = standardized("iris")
    centres = X[[0, 10, 100]]
    lloyd = SkKMeans(3, algorithm="lloyd", n_init=1, init=centres, tol=0).fit(X)
    gaps, softness = [], []
    for variance in [1.0, 1e-1, 1e-2, 1e-3]:
        family = Gaussian("spherical", variance=variance, uniform_weights=True)
        params = GaussianParams(
            jnp.full(3, 1 / 3), jnp.asarray(centres), jnp.full(3, variance)
        )
        result = jaxmix.fit(
            family, jnp.asarray(X), params, max_iter=500, tol=1e-20, criterion="means"
        )
        resp, _ = jaxmix.e_step(family, result.params, jnp.asarray(X))
        gaps.append(
            np.abs(np.asarray(result.params.means) - lloyd.cluster_centers_).max()
        )
        softness.append(float(1 - jnp.min(jnp.max(resp, axis=1))))
    assert gaps[0] > 1.0 and softness[0] > 0.1  # far from hard at σ² = 1
    assert all(np.diff(gaps) < 0) and all(np.diff(softness) <= 0)
    assert gaps[-1] < 1e-9 and softness[-1] < 1e-9


def test_means_criterion_runs_until_assignments_stop():
    X = jnp.asarray(standardized("wine"))
    params = GaussianParams(jnp.full(5, 0.2), X[:5], jnp.ones(5))
    result = jaxmix.fit(
        IsotropicGaussian(),
        X,
        params,
        hard=True,
        tol=0.0,
        max_iter=300,
        criterion="means",
    )
    assert int(result.status) == em.CONVERGED
    again = jaxmix.fit(
        IsotropicGaussian(),
        X,
        result.params,
        hard=True,
        tol=0.0,
        max_iter=300,
        criterion="means",
    )
    assert int(again.n_iter) == 1
    np.testing.assert_array_equal(again.params.means, result.params.means)
    with pytest.raises(ValueError, match="criterion"):
        jaxmix.fit(IsotropicGaussian(), X, params, criterion="centres")


def test_laplace_needs_one_block_and_hard_responsibilities():
    X = jnp.asarray(standardized("iris"))
    params = LaplaceParams(jnp.full(3, 1 / 3), X[:3], jnp.ones(3))
    family = Laplace(order=sort_order(X))
    with pytest.raises(ValueError, match="one block"):
        jaxmix.fit(family, X, params, hard=True, chunk_size=50)
    soft = jaxmix.fit(family, X, params, max_iter=5)  # soft EM: not supported
    assert int(soft.status) == em.NONFINITE
    with pytest.raises(ValueError, match="order"):
        jaxmix.fit(Laplace(order=sort_order(X[:100])), X, params, hard=True)


# -- bad input and degenerate data -----------------------------------------------
@pytest.mark.parametrize("estimator", [KMeans, KMedians])
def test_bad_input(estimator):
    X = standardized("iris")
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimator(3).fit(bad)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        estimator(3).fit(bad)
    with pytest.raises(ValueError, match="n_samples=5 should be >= n_clusters=6"):
        estimator(6).fit(X[:5])
    with pytest.raises(ValueError, match="shape of the initial centers"):
        estimator(3, init=X[:2]).fit(X)
    with pytest.raises(ValueError, match="shape of the initial centers"):
        estimator(3, init=X[:3, :2]).fit(X)
    with pytest.raises(ValueError, match="init"):
        estimator(3, init="kmeans").fit(X)
    with pytest.raises(ValueError, match="sample_weight"):
        estimator(3).fit(X, sample_weight=-np.ones(len(X)))
    with pytest.raises(jaxmix.NotFittedError):
        estimator(3).predict(X)
    with pytest.raises(ValueError, match="features"):
        estimator(3, random_state=0).fit(X).predict(X[:, :2])


@pytest.mark.parametrize("init", ["k-means++", "random", "duplicated"])
@pytest.mark.parametrize("estimator", [KMeans, KMedians])
def test_more_clusters_than_distinct_points(estimator, init):
    X = np.repeat(np.array([[0.0, 1.0], [2.0, 3.0], [5.0, -1.0]]), 4, axis=0)
    if init == "duplicated":
        init = X[[0, 0, 0, 4, 4]]
    model = estimator(5, init=init, random_state=0).fit(X)
    assert np.all(np.isfinite(model.cluster_centers_))
    assert model.inertia_ == 0.0
    assert set(map(tuple, model.cluster_centers_)) <= set(map(tuple, X))
