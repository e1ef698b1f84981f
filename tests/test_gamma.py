"""GammaMixture (generalized EM) against scipy.stats.gamma in float64.

The estimator fits float64 data in float64 by itself, so no test here turns on
JAX's x64 flag. A generalized-EM fit compiles a sizeable program (L-BFGS inside
the EM loop), so every fit here has N ≤ 256 samples (one padded size), D = 2
features, float64 and one ``max_iter``: three programs in all, for K = 2, for
K = 1, and for K = 2 started from given params (user starts and warm starts).
"""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.utils import get_tags

from jaxmix import GammaMixture
from jaxmix.io import load_model, save_model

K, D, N = 2, 2, 250
MAX_ITER = 200
TOL = 1e-14  # |Δ mean log-likelihood| < TOL: only once GEM stops moving
TRUE_WEIGHTS = np.array([0.4, 0.6])
TRUE_SHAPES = np.array([[2.0, 5.0], [20.0, 30.0]])
TRUE_RATES = np.array([[2.0, 1.0], [1.0, 2.0]])  # means [1, 5] and [20, 15]


def make_data(seed=0, n_samples=N):
    rng = np.random.default_rng(seed)
    labels = rng.choice(K, size=n_samples, p=TRUE_WEIGHTS)
    return rng.gamma(TRUE_SHAPES[labels], 1.0 / TRUE_RATES[labels])


X = make_data()


def gamma_mixture(n_components=K, **kwargs):
    return GammaMixture(
        n_components, **{"tol": TOL, "max_iter": MAX_ITER, "random_state": 0, **kwargs}
    )


def _fit(model, data, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every fit here converges
        return model.fit(data, **kwargs)


@pytest.fixture(scope="module")
def fitted() -> GammaMixture:
    return _fit(gamma_mixture(), X)


def scipy_log_joint(model, data) -> np.ndarray:
    """log π_k + Σ_d log Gamma(x_nd | α_kd, β_kd), (N, K), by scipy."""
    log_density = stats.gamma.logpdf(
        data[:, None, :], model.shapes_[None], scale=1.0 / model.rates_[None]
    ).sum(-1)
    return np.log(model.weights_) + log_density


def test_one_component_is_scipy_gamma_fit():
    # One component: every start is the moment match of all the data.
    model = _fit(gamma_mixture(1, init_params="random"), X)
    assert model.converged_
    np.testing.assert_array_equal(model.weights_, [1.0])
    for d in range(D):
        shape, loc, scale = stats.gamma.fit(X[:, d], floc=0)
        assert loc == 0
        np.testing.assert_allclose(model.shapes_[0, d], shape, rtol=1e-6)
        np.testing.assert_allclose(model.rates_[0, d], 1.0 / scale, rtol=1e-6)


def test_two_components_recover_the_truth(fitted):
    assert fitted.converged_
    assert fitted.shapes_.dtype == fitted.rates_.dtype == np.float64
    np.testing.assert_allclose(fitted.rates_, fitted.shapes_ / fitted.means_)
    order = np.argsort(fitted.means_[:, 0])
    np.testing.assert_allclose(fitted.weights_[order], TRUE_WEIGHTS, atol=0.08)
    np.testing.assert_allclose(fitted.means_[order], TRUE_SHAPES / TRUE_RATES, rtol=0.1)
    # Shapes and rates of ~100 samples each: roughly.
    np.testing.assert_allclose(fitted.shapes_[order], TRUE_SHAPES, rtol=0.35)
    np.testing.assert_allclose(fitted.rates_[order], TRUE_RATES, rtol=0.35)


def test_generalized_em_never_lowers_the_log_likelihood(fitted):
    trace = np.asarray(fitted.lower_bounds_)
    assert len(trace) == fitted.n_iter_ > 1
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))


def test_scores_are_scipy_gamma_logpdf(fitted):
    log_joint = scipy_log_joint(fitted, X)
    log_norm = logsumexp(log_joint, axis=1)
    np.testing.assert_allclose(fitted.score_samples(X), log_norm, rtol=1e-12)
    assert fitted.score(X) == pytest.approx(np.mean(log_norm), rel=1e-10, abs=0)
    # The last E-step was at the params before the last M-step, which moved
    # them by less than the tolerance's worth of log-likelihood.
    assert fitted.lower_bound_ == pytest.approx(fitted.score(X), abs=1e-10)
    resp = np.exp(log_joint - log_norm[:, None])
    np.testing.assert_allclose(fitted.predict_proba(X), resp, atol=1e-12)
    np.testing.assert_array_equal(fitted.predict(X), np.argmax(log_joint, axis=1))
    n_parameters = 2 * K * D + K - 1
    assert fitted.bic(X) == pytest.approx(
        -2 * log_norm.sum() + n_parameters * np.log(N), rel=1e-10
    )
    assert fitted.aic(X) == pytest.approx(
        -2 * log_norm.sum() + 2 * n_parameters, rel=1e-10
    )


def test_integer_sample_weights_equal_repeated_rows():
    # Both data sets pad to the same size as X: the same program as `fitted`.
    data = X[:120]
    weights = np.random.default_rng(1).integers(0, 4, len(data))
    assert weights.sum() <= 256
    weighted = _fit(gamma_mixture(), data, sample_weight=weights.astype(float))
    repeated = _fit(gamma_mixture(), np.repeat(data, weights, axis=0))
    # The k-means starts differ (seeds are drawn among distinct rows); both
    # fits end at the same maximum.
    order = [np.argsort(m.means_[:, 0]) for m in (weighted, repeated)]
    for name in ("weights_", "shapes_", "means_"):
        np.testing.assert_allclose(
            getattr(weighted, name)[order[0]],
            getattr(repeated, name)[order[1]],
            rtol=1e-6,
            err_msg=name,
        )
    assert weighted.score(np.repeat(data, weights, axis=0)) == pytest.approx(
        repeated.lower_bound_, abs=1e-10
    )


def test_given_start_and_warm_start(fitted):
    start = dict(
        weights_init=fitted.weights_,
        shapes_init=fitted.shapes_,
        means_init=fitted.means_,
    )
    # From the maximum, generalized EM finds nothing better: it stays there.
    model = _fit(gamma_mixture(**start), X)
    for name in ("weights_", "shapes_", "means_"):
        np.testing.assert_allclose(
            getattr(model, name), getattr(fitted, name), rtol=1e-9, err_msg=name
        )
    # A warm start continues from the previous fit (the same program).
    rough = _fit(gamma_mixture(max_iter=MAX_ITER, tol=1e-2, warm_start=True), X)
    first = rough.lower_bound_
    _fit(rough.set_params(tol=TOL), X)
    assert rough.converged_ and rough.lower_bound_ >= first
    assert rough.score(X) == pytest.approx(fitted.score(X), abs=1e-9)


def test_m_step_iter_sets_the_generalized_m_step():
    family = GammaMixture(2, m_step_iter=3)._make_family(None)
    assert not family.closed_form_m_step
    assert family.generalized_m_step.steps == 3
    assert GammaMixture()._make_family(None) == GammaMixture()._make_family(None)


def test_sample(fitted):
    data, labels = fitted.sample(20_000)
    assert data.shape == (20_000, D) and data.dtype == np.float64
    assert np.all(data > 0)
    np.testing.assert_array_equal(np.diff(labels) >= 0, True)  # grouped
    np.testing.assert_allclose(np.bincount(labels) / 20_000, fitted.weights_, atol=0.02)
    for k in range(K):
        np.testing.assert_allclose(
            data[labels == k].mean(0), fitted.means_[k], rtol=0.03
        )
    np.testing.assert_allclose(fitted.mean(), fitted.weights_ @ fitted.means_)
    with pytest.raises(ValueError, match="at least one sample"):
        fitted.sample(0)


def test_bad_input_says_what_is_wrong(fitted):
    bad = X.copy()
    bad[3, 1] = -1.0
    with pytest.raises(ValueError, match="Negative values in data passed to Gamma"):
        gamma_mixture().fit(bad)
    bad[3, 1] = 0.0
    with pytest.raises(ValueError, match="positive data, but X has the value 0"):
        gamma_mixture().fit(bad)
    for value in (np.nan, np.inf):
        bad[3, 1] = value
        with pytest.raises(ValueError, match="NaN|infinity"):
            gamma_mixture().fit(bad)
    cases = {
        "shapes_init": (np.ones((K, D + 1)), r"shapes_init must have shape \(2, 2\)"),
        "means_init": (np.zeros((K, D)), "means_init must be > 0, got 0"),
        "weights_init": ([0.5, 0.6], "weights_init must sum to 1"),
        "m_step_iter": (0, "'m_step_iter' parameter"),
    }
    for name, (value, match) in cases.items():
        with pytest.raises(ValueError, match=match):
            gamma_mixture(**{name: value}).fit(X)
    with pytest.raises(ValueError, match="Expected n_samples >= n_components"):
        gamma_mixture(3).fit(X[:2])
    with pytest.raises(ValueError, match="positive data"):
        fitted.predict(np.zeros((2, D)))
    with pytest.raises(ValueError, match="Negative values"):
        fitted.score_samples(-X[:2])
    with pytest.raises(ValueError, match="features"):
        fitted.predict(X[:, :1])


def test_scikit_learn_conventions_on_positive_data(fitted):
    # check_estimator's conventions on this file's data, against `fitted`
    # (tests/test_sklearn_api.py runs the checks themselves, on data shifted to
    # be strictly positive); each refit reuses the program of `fitted`.
    model = clone(fitted)
    params = model.get_params()
    readonly = np.asfortranarray(X)
    readonly.setflags(write=False)
    assert model.fit(readonly, sample_weight=[1.0] * N) is model
    assert model.get_params() == params and model.n_features_in_ == D
    for name in ("weights_", "shapes_", "means_", "rates_", "n_iter_"):
        np.testing.assert_array_equal(getattr(model, name), getattr(fitted, name))
    copy_ = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(copy_.score_samples(X), fitted.score_samples(X))
    order = np.random.default_rng(2).permutation(N)
    for method in ("score_samples", "predict_proba", "predict"):
        full = getattr(fitted, method)(X)
        np.testing.assert_allclose(getattr(fitted, method)(X[:17]), full[:17])
        np.testing.assert_allclose(getattr(fitted, method)(X[order]), full[order])
    assert get_tags(fitted).input_tags.positive_only


def test_model_file_round_trip(fitted):
    buffer = io.BytesIO()
    save_model(buffer, fitted)
    restored = load_model(io.BytesIO(buffer.getvalue()))
    assert restored.get_params() == fitted.get_params()
    for name in ("weights_", "shapes_", "means_", "rates_", "lower_bounds_", "n_iter_"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(fitted, name))
    np.testing.assert_array_equal(restored.score_samples(X), fitted.score_samples(X))
