"""The small-problem path: equal to the general engine, float32-safe, chosen by itself.

Every fit here has the same shapes (8 data sets padded to 60 samples, D=2, K=3,
sample weights, 40 iterations), so the tests share their compiled programs.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxmix
from jaxmix.engine import batch, em, small
from jaxmix.families import Gaussian, GaussianParams

D, K = 2, 3
LENGTHS = (60, 41, 55, 48, 60, 37, 52, 44)
LOOP = dict(max_iter=40, tol=1e-6)
TYPES = ("full", "tied", "diag", "spherical")


@pytest.fixture(scope="module", autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _datasets(seed, offset=0.0, scale=4.0):
    rng = np.random.default_rng(seed)
    datasets = []
    for n in LENGTHS:
        centres = rng.normal(scale=scale, size=(K, D))
        stretch = rng.uniform(0.5, 1.5, size=(K, D))
        labels = rng.integers(K, size=n)
        datasets.append(
            offset + centres[labels] + stretch[labels] * rng.normal(size=(n, D))
        )
    weights = [rng.uniform(0.5, 2.0, size=len(X)) for X in datasets]
    return datasets, weights


def _starts(datasets, covariance_type, dtype=np.float64):
    """Per data set: three of its samples as means, its covariance, equal weights."""
    means = np.stack([X[[0, len(X) // 2, -1]] for X in datasets])
    covariance = np.stack([np.cov(X.T) for X in datasets])
    variance = np.stack([X.var(axis=0) for X in datasets])
    covariances = {
        "full": np.repeat(covariance[:, None], K, axis=1),
        "tied": covariance,
        "diag": np.repeat(variance[:, None], K, axis=1),
        "spherical": np.repeat(variance.mean(axis=1, keepdims=True), K, axis=1),
    }[covariance_type]
    weights = np.full((len(datasets), K), 1.0 / K)
    return GaussianParams(
        weights.astype(dtype), means.astype(dtype), covariances.astype(dtype)
    )


def _assert_same_fits(got, want, rtol=1e-10):
    """Params and objective within rtol (entries near zero: relative to the leaf)."""
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())
    np.testing.assert_allclose(got.log_likelihood, want.log_likelihood, rtol=rtol)
    np.testing.assert_array_equal(got.n_iter, want.n_iter)
    np.testing.assert_array_equal(got.status, want.status)


@pytest.fixture(scope="module")
def padded():
    datasets, weights = _datasets(0)
    Xs, sample_weight = jaxmix.pad_datasets(datasets, weights)
    return datasets, Xs, sample_weight


@pytest.mark.parametrize("covariance_type", TYPES)
def test_equals_general_path_with_weights_and_padding(padded, covariance_type):
    _, Xs, sample_weight = padded
    family = Gaussian(covariance_type)
    starts = _starts([X[w > 0] for X, w in zip(Xs, sample_weight)], covariance_type)
    key = jax.random.key(0)
    common = dict(params=starts, sample_weight=sample_weight, **LOOP)
    general = batch.fit_many(family, Xs, key, K, _path="general", **common)
    fast = batch.fit_many(family, Xs, key, K, **common)
    # Some fits converge early, some run to max_iter: n_iter is compared.
    assert len(set(np.asarray(general.n_iter).tolist())) > 1
    assert np.all(general.status != em.NONFINITE)
    _assert_same_fits(fast, general)
    # The centred statistics (float32's, and the fallback of float64's raw
    # moments) agree too.
    centred = batch._small_from_params_jit(
        family,
        Xs,
        starts,
        LOOP["tol"],
        sample_weight,
        max_iter=LOOP["max_iter"],
        moments=False,
    )
    _assert_same_fits(centred, general)


def test_padding_gives_the_unpadded_fit(padded):
    """Zero weight means absent: data set b alone (unpadded) gives the same fit."""
    datasets, Xs, sample_weight = padded
    family = Gaussian("full")
    starts = _starts([X[w > 0] for X, w in zip(Xs, sample_weight)], "full")
    fast = batch.fit_many(
        family,
        Xs,
        jax.random.key(0),
        K,
        params=starts,
        sample_weight=sample_weight,
        **LOOP,
    )
    b = 5  # the shortest data set: 23 padding rows
    single = jaxmix.fit(
        family,
        datasets[b],
        jax.tree.map(lambda leaf: leaf[b], starts),
        sample_weight=sample_weight[b, : LENGTHS[b]],
        **LOOP,
    )
    for got, want in zip(fast.params, single.params):
        np.testing.assert_allclose(got[b], want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        fast.log_likelihood[b], single.log_likelihood, rtol=1e-10
    )
    assert int(fast.n_iter[b]) == int(single.n_iter)


def test_float32_keeps_its_digits_on_offset_data():
    """Data around 1e4 in float32 against the general engine in float64.

    The reference fits the same float32-rounded data in float64. Centring each
    data set at its mean and the statistics at the current means keeps the
    1e4 offset out of the sums (a raw second moment would lose every digit:
    1e8 · 1.2e-7 ≈ 10, against variances of about 1). Tolerances: most fits
    agree to about 1e-6; the slowest to converge (data set 4, still moving
    along a flat direction after 40 iterations) drifts by about 1e-4 in its
    covariances in float32, in the general engine as well.
    """
    datasets, weights = _datasets(1, offset=1e4, scale=6.0)
    Xs, sample_weight = jaxmix.pad_datasets(datasets, weights)
    Xs, sample_weight = Xs.astype(np.float32), sample_weight.astype(np.float32)
    family = Gaussian("full")
    starts = _starts(datasets, "full")
    loop = dict(LOOP, tol=0.0)
    key = jax.random.key(0)
    reference = batch.fit_many(
        family,
        Xs.astype(np.float64),
        key,
        K,
        params=starts,
        sample_weight=sample_weight.astype(np.float64),
        _path="general",
        **loop,
    )
    starts32 = jax.tree.map(lambda leaf: leaf.astype(np.float32), starts)
    fast = batch.fit_many(
        family, Xs, key, K, params=starts32, sample_weight=sample_weight, **loop
    )
    assert fast.params.means.dtype == np.float32
    np.testing.assert_array_equal(fast.status, em.MAX_ITER)
    want = reference.params
    np.testing.assert_allclose(fast.params.weights, want.weights, atol=2e-4)
    np.testing.assert_allclose(fast.params.means, want.means, rtol=0, atol=2e-3)
    np.testing.assert_allclose(
        fast.params.covariances, want.covariances, rtol=2e-3, atol=2e-3
    )
    np.testing.assert_allclose(fast.log_likelihood, reference.log_likelihood, rtol=1e-5)


def test_component_losing_its_samples_and_masked_component(padded):
    """An emptied component and a weight-zero (masked) one, as in the general engine.

    Data set 0 starts a component far from every sample: its responsibilities
    underflow to zero, its count is the guard 10ε, its mean stays and its
    covariance becomes reg_covar·I. Data set 1 starts a component at weight
    exactly zero, which never takes responsibility and stays at zero.
    """
    _, Xs, sample_weight = padded
    family = Gaussian("full")
    starts = _starts([X[w > 0] for X, w in zip(Xs, sample_weight)], "full")
    means = starts.means.copy()
    means[0, 2] = 1e3
    weights = starts.weights.copy()
    weights[1] = [0.5, 0.5, 0.0]
    starts = starts._replace(means=means, weights=weights)
    common = dict(params=starts, sample_weight=sample_weight, **LOOP)
    key = jax.random.key(0)
    general = batch.fit_many(family, Xs, key, K, _path="general", **common)
    fast = batch.fit_many(family, Xs, key, K, **common)
    _assert_same_fits(fast, general)
    np.testing.assert_array_equal(fast.params.means[0, 2], [1e3, 1e3])
    np.testing.assert_allclose(fast.params.covariances[0, 2], 1e-6 * np.eye(D))
    assert 0 < fast.params.weights[0, 2] < 1e-15
    assert fast.params.weights[1, 2] == 0


def test_estimator_restarts_equal_general_path(padded, monkeypatch):
    """The estimators' fit_many (random starts, 2 restarts) picks the small path.

    The starts are made by the general code on both paths; the k-means start
    (the default) goes through the same code and is compared in test_batch.py.
    """
    datasets, _, _ = padded
    settings = dict(n_init=2, random_state=0, init_params="random_from_data", **LOOP)
    calls = []
    run_small = batch._fit_many_small
    monkeypatch.setattr(
        batch, "_fit_many_small", lambda *a, **k: calls.append(1) or run_small(*a, **k)
    )
    fast = jaxmix.GaussianMixture(K, **settings).fit_many(datasets)
    assert calls == [1]
    monkeypatch.setattr(small, "applies", lambda *args, **kwargs: False)
    general = jaxmix.GaussianMixture(K, **settings).fit_many(datasets)
    assert calls == [1]
    for name in ("weights_", "means_", "covariances_", "lower_bound_"):
        got, want = getattr(fast, name), getattr(general, name)
        np.testing.assert_allclose(
            got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max()
        )
    np.testing.assert_array_equal(fast.n_iter_, general.n_iter_)
    np.testing.assert_array_equal(fast.converged_, general.converged_)


def test_dispatch_picks_the_small_path_only_where_it_applies(padded, monkeypatch):
    _, Xs, sample_weight = padded
    calls = []
    run_small = batch._fit_many_small
    monkeypatch.setattr(
        batch, "_fit_many_small", lambda *a, **k: calls.append(1) or run_small(*a, **k)
    )
    starts = _starts([X[w > 0] for X, w in zip(Xs, sample_weight)], "full")
    common = dict(params=starts, sample_weight=sample_weight, **LOOP)
    batch.fit_many(Gaussian("full"), Xs, jax.random.key(0), K, **common)
    assert calls == [1]
    batch.fit_many(
        Gaussian("full"), Xs, jax.random.key(0), K, _path="general", **common
    )
    assert calls == [1]

    def applies(
        family, n_components=K, n_features=D, hard=False, criterion="objective"
    ):
        return small.applies(
            family, n_components, n_features, hard=hard, criterion=criterion
        )

    for covariance_type in TYPES:
        assert applies(Gaussian(covariance_type, reg_covar=1e-3))
        assert applies(Gaussian(covariance_type, uniform_weights=True))
    assert not applies(Gaussian(weight_concentration=2.0))
    niw = dict(
        mean_prior=np.zeros(D),
        mean_precision=1.0,
        degrees_of_freedom=3.0,
        covariance_prior=np.eye(D),
    )
    assert not applies(Gaussian(**niw))
    assert not applies(Gaussian(variance=1.0))
    assert not applies(Gaussian(), hard=True)
    assert not applies(Gaussian(), criterion="means")
    assert not applies(Gaussian(), n_features=small.MAX_FEATURES + 1)
    assert not applies(Gaussian(), n_components=small.MAX_COMPONENTS + 1)
    assert not applies(jaxmix.families.Bernoulli())
    with pytest.raises(ValueError, match="small-problem path"):
        batch.fit_many(
            Gaussian(variance=1.0), Xs, jax.random.key(0), K, _path="small", **common
        )
