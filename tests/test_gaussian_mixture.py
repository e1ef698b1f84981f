"""GaussianMixture against scikit-learn, float64 references and identities."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
from conftest import real_datasets, spread_start
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import jaxmix
from jaxmix import GaussianMixture

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
N_COMPONENTS = {"faithful": 2, "iris": 3, "wine": 3, "breast_cancer": 2, "digits": 4}
DATA = real_datasets()


def _fit_to_max_iter(model, X, **fit_kwargs):
    """Fit a model that cannot converge (tol=0): it warns that it did not."""
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        return model.fit(X, **fit_kwargs)


def _fit_both(X, covariance_type, n_components, n_iter):
    weights, means, precisions = spread_start(X, n_components, covariance_type)
    kwargs = dict(
        covariance_type=covariance_type,
        max_iter=n_iter,
        tol=0.0,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
    )
    ours = _fit_to_max_iter(GaussianMixture(n_components, **kwargs), X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # scikit-learn's own
        theirs = SkGaussianMixture(n_components, **kwargs).fit(X)
    return ours, theirs


def _assert_params_close(ours, theirs, rtol, atol_scale):
    for name in ("weights_", "means_", "covariances_"):
        a, b = getattr(ours, name), getattr(theirs, name)
        scale = np.max(np.abs(b))
        np.testing.assert_allclose(
            a, b, rtol=rtol, atol=atol_scale * scale, err_msg=name
        )
    # Precision factors of ill-conditioned covariances (breast cancer's features
    # span six decades) amplify round-off entrywise: compare them as matrices.
    a, b = ours.precisions_cholesky_, theirs.precisions_cholesky_
    gap = np.linalg.norm(a - b)
    assert gap <= rtol * np.linalg.norm(b), (gap, np.linalg.norm(b))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("name", sorted(DATA))
def test_matches_scikit_learn_float64(name, covariance_type):
    X = DATA[name]
    ours, theirs = _fit_both(X, covariance_type, N_COMPONENTS[name], n_iter=8)
    assert ours.means_.dtype == np.float64
    assert ours.n_iter_ == theirs.n_iter_ == 8
    _assert_params_close(ours, theirs, rtol=1e-6, atol_scale=1e-9)
    assert abs(ours.lower_bound_ - theirs.lower_bound_) < 1e-6 * max(
        1.0, abs(theirs.lower_bound_)
    )
    np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=1e-8)
    np.testing.assert_allclose(
        ours.score_samples(X), theirs.score_samples(X), rtol=1e-7, atol=1e-7
    )
    np.testing.assert_allclose(
        ours.predict_proba(X), theirs.predict_proba(X), atol=1e-6
    )
    assert ours.bic(X) == pytest.approx(theirs.bic(X), rel=1e-9)
    assert ours.aic(X) == pytest.approx(theirs.aic(X), rel=1e-9)


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_close_to_float64(covariance_type, offset):
    # Same float32-rounded data, fitted in float32 and in float64: the gap is
    # the algorithm's round-off only. 1e-3 relative is the bound; the
    # centred statistics keep it even 1e4 away from the origin.
    X32 = (DATA["iris"] + offset).astype(np.float32)
    weights, means, precisions = spread_start(X32, 3, covariance_type)
    kwargs = dict(
        covariance_type=covariance_type,
        max_iter=30,
        tol=0.0,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
    )
    single = _fit_to_max_iter(GaussianMixture(3, **kwargs), X32)
    double = _fit_to_max_iter(GaussianMixture(3, **kwargs), X32.astype(np.float64))
    assert single.means_.dtype == np.float32 and double.means_.dtype == np.float64
    np.testing.assert_allclose(single.weights_, double.weights_, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(
        single.means_ - offset,
        double.means_ - offset,
        atol=1e-3 * np.abs(DATA["iris"]).max(),
    )
    np.testing.assert_allclose(
        single.covariances_,
        double.covariances_,
        rtol=1e-3,
        atol=1e-3 * np.abs(double.covariances_).max(),
    )
    assert single.lower_bound_ == pytest.approx(double.lower_bound_, rel=1e-3)


def test_float_input_never_changes_the_global_flag():
    before = jax.config.jax_enable_x64
    GaussianMixture(2, random_state=0).fit(DATA["faithful"])
    assert jax.config.jax_enable_x64 == before


def test_integer_and_boolean_input_is_float64():
    X = np.rint(DATA["faithful"]).astype(np.int64)
    model = GaussianMixture(2, random_state=0).fit(X)
    assert model.means_.dtype == np.float64


def _default_fit():
    return GaussianMixture(2, random_state=0).fit(DATA["faithful"])


def test_methods_agree_with_each_other():
    X = DATA["faithful"]
    model = _default_fit()
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(model.predict(X), proba.argmax(axis=1))
    assert model.score(X) == pytest.approx(model.score_samples(X).mean())
    # precisions and their Cholesky factors are those of the covariances
    for cov, prec, chol in zip(
        model.covariances_, model.precisions_, model.precisions_cholesky_
    ):
        np.testing.assert_allclose(prec @ cov, np.eye(2), atol=1e-8)
        np.testing.assert_allclose(chol @ chol.T, prec, rtol=1e-10)
    labels = GaussianMixture(2, random_state=0).fit_predict(X)
    np.testing.assert_array_equal(labels, model.predict(X))


def test_sample_follows_the_model():
    model = _default_fit()
    model.random_state = 1
    X, labels = model.sample(20000)
    assert X.shape == (20000, 2) and labels.shape == (20000,)
    for k in range(2):
        chosen = X[labels == k]
        # means within 5 standard errors
        stderr = np.sqrt(np.diag(model.covariances_[k]) / len(chosen))
        assert np.all(np.abs(chosen.mean(0) - model.means_[k]) < 5 * stderr)
        assert abs(len(chosen) / 20000 - model.weights_[k]) < 5 * np.sqrt(0.25 / 20000)
    with pytest.raises(ValueError, match="n_samples"):
        model.sample(0)


def test_sample_weight_equals_repeated_rows():
    # Integer weights are the same as repeating samples (identity, same start).
    X = DATA["iris"]
    counts = np.arange(len(X)) % 3
    weights, means, precisions = spread_start(X, 3, "full")
    kwargs = dict(
        max_iter=15,
        tol=0.0,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
    )
    weighted = _fit_to_max_iter(GaussianMixture(3, **kwargs), X, sample_weight=counts)
    repeated = _fit_to_max_iter(
        GaussianMixture(3, **kwargs), np.repeat(X, counts, axis=0)
    )
    np.testing.assert_allclose(weighted.means_, repeated.means_, rtol=1e-9)
    np.testing.assert_allclose(weighted.covariances_, repeated.covariances_, rtol=1e-9)
    assert weighted.lower_bound_ == pytest.approx(repeated.lower_bound_, rel=1e-10)


def test_warm_start_continues_from_previous_fit():
    X = DATA["faithful"]
    cold = _fit_to_max_iter(GaussianMixture(2, max_iter=6, tol=0.0, random_state=0), X)
    warm = GaussianMixture(2, max_iter=3, tol=0.0, random_state=0, warm_start=True)
    _fit_to_max_iter(_fit_to_max_iter(warm, X), X)
    np.testing.assert_allclose(warm.means_, cold.means_, rtol=1e-10)
    np.testing.assert_allclose(warm.covariances_, cold.covariances_, rtol=1e-10)


def test_n_init_keeps_the_best_restart(x64):
    # The estimator draws one key per restart from random_state; refitting each
    # restart alone through the functional API must find the estimator's pick
    # among them, and nothing better.
    from jaxmix.estimators.validation import jax_key

    X = DATA["wine"]
    best = GaussianMixture(
        4, n_init=4, init_params="random", random_state=3, covariance_type="diag"
    ).fit(X)
    family = jaxmix.families.Gaussian("diag")
    data = jax.numpy.asarray(X)
    singles = []
    for key in jax.random.split(jax_key(3), 4):
        start = jaxmix.initialize(family, key, data, 4, method="random")
        singles.append(float(jaxmix.fit(family, data, start).log_likelihood))
    assert len(set(np.round(singles, 8))) > 1  # the restarts really differ
    assert best.lower_bound_ == pytest.approx(max(singles), rel=1e-10)


def test_verbose_prints_a_report(capsys):
    GaussianMixture(2, verbose=2, verbose_interval=1, random_state=0).fit(
        DATA["faithful"]
    )
    out = capsys.readouterr().out
    assert "Initialization 0" in out and "Iteration 1" in out and "ll change" in out


def test_get_set_params_and_clone():
    from sklearn.base import clone

    model = GaussianMixture(3, covariance_type="diag", tol=1e-4)
    params = model.get_params()
    assert params["n_components"] == 3 and params["covariance_type"] == "diag"
    copy = clone(model)
    assert copy.get_params() == params
    model.set_params(n_components=5)
    assert model.n_components == 5
    with pytest.raises(ValueError, match="Invalid parameter"):
        model.set_params(bogus=1)


# One shape for every case, so each covariance type and dtype compiles once.
DEGENERATE = {
    "identical points": np.ones((40, 2)),
    "constant feature": np.c_[np.linspace(0, 1, 40), np.full(40, 7.0)],
    "two distinct points": np.repeat([[0.0, 0.0], [1.0, 1.0]], 20, axis=0),
    "tiny scale": 1e-12 * np.random.default_rng(0).normal(size=(40, 2)),
    "huge scale": 1e12 * np.random.default_rng(1).normal(size=(40, 2)),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_data_fits_to_finite_parameters(case, covariance_type, dtype):
    X = DEGENERATE[case].astype(dtype)
    model = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(model, name))), name
    assert np.isfinite(model.lower_bound_)
    assert np.all(np.isfinite(model.score_samples(X)))


def test_float32_far_from_origin_fits():
    rng = np.random.default_rng(2)
    X = np.r_[rng.normal(0, 1, (100, 2)), rng.normal(6, 1, (100, 2))] + 1e6
    model = GaussianMixture(2, random_state=0).fit(X.astype(np.float32))
    assert np.all(np.isfinite(model.covariances_))
    order = np.argsort(model.means_[:, 0])
    np.testing.assert_allclose(model.means_[order] - 1e6, [[0, 0], [6, 6]], atol=0.4)
    for cov in model.covariances_:
        np.testing.assert_allclose(cov, np.eye(2), atol=0.4)


def test_unregularised_collapse_raises_clearly():
    X = np.r_[np.zeros((5, 2)), np.random.default_rng(0).normal(size=(20, 2))]
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        GaussianMixture(
            2,
            reg_covar=0.0,
            random_state=0,
            init_params="k-means++",
            means_init=[[0.0, 0.0], [0.5, 0.5]],
        ).fit(X)


X_OK = np.random.default_rng(0).normal(size=(10, 2))


@pytest.mark.parametrize(
    "kwargs, X, fit_kwargs, match",
    [
        ({}, np.array([[1.0, np.nan], [0.0, 1.0]]), {}, "NaN"),
        # With allow_nan NaN marks a missing value; a row with nothing
        # observed is an error, and infinity stays one.
        (
            {"allow_nan": True},
            np.array([[0.0, 1.0], [np.nan, np.nan]]),
            {},
            "Row 1 of X has no observed value",
        ),
        ({"allow_nan": True}, np.array([[1.0, np.inf], [0.0, 1.0]]), {}, "infinity"),
        ({}, np.array([[1.0, np.inf], [0.0, 1.0]]), {}, "infinity"),
        ({}, np.arange(5.0), {}, "2D"),
        ({}, np.array([["a", "b"], ["c", "d"]]), {}, "numeric"),
        ({"n_components": 11}, X_OK, {}, "n_samples >= n_components"),
        ({"n_components": 0}, X_OK, {}, "n_components"),
        ({"covariance_type": "banana"}, X_OK, {}, "covariance_type"),
        ({"init_params": "banana"}, X_OK, {}, "init_params"),
        ({"tol": -1.0}, X_OK, {}, "tol"),
        ({"reg_covar": -1.0}, X_OK, {}, "reg_covar"),
        ({"max_iter": -1}, X_OK, {}, "max_iter"),
        ({"n_init": 0}, X_OK, {}, "n_init"),
        ({"n_components": 2, "weights_init": [0.5, 0.6]}, X_OK, {}, "normalized"),
        ({"n_components": 2, "weights_init": [1.0]}, X_OK, {}, "shape"),
        ({"n_components": 2, "weights_init": [1.5, -0.5]}, X_OK, {}, "range"),
        ({"n_components": 2, "means_init": np.zeros((2, 3))}, X_OK, {}, "shape"),
        (
            {"n_components": 2, "precisions_init": -np.stack([np.eye(2)] * 2)},
            X_OK,
            {},
            "positive-definite",
        ),
        (
            {
                "n_components": 2,
                "covariance_type": "diag",
                "precisions_init": np.zeros((2, 2)),
            },
            X_OK,
            {},
            "positive",
        ),
        ({}, X_OK, {"sample_weight": -np.ones(10)}, "non-negative"),
        ({}, X_OK, {"sample_weight": np.ones(3)}, "shape"),
    ],
)
def test_bad_input_raises_value_error(kwargs, X, fit_kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs).fit(X, **fit_kwargs)


def test_methods_before_fit_and_wrong_feature_count():
    model = GaussianMixture(2)
    with pytest.raises(jaxmix.NotFittedError):
        model.predict(X_OK)
    with pytest.raises(ValueError):  # NotFittedError is a ValueError too
        model.score_samples(X_OK)
    model.fit(X_OK)
    with pytest.raises(ValueError, match="3 features"):
        model.predict(np.zeros((4, 3)))


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_moments_of_a_fit_equal_the_data_moments(covariance_type):
    # Identity of the ML M-step: after it, Σ π_k μ_k is the sample mean and the
    # mixture covariance is the (biased) sample covariance plus reg_covar·I.
    X = DATA["wine"][:, :4]
    model = GaussianMixture(
        3,
        covariance_type=covariance_type,
        max_iter=5,
        tol=0.0,
        reg_covar=1e-4,
        random_state=0,
    )
    _fit_to_max_iter(model, X)
    np.testing.assert_allclose(model.mean(), X.mean(axis=0), rtol=1e-12)
    expected = np.cov(X.T, bias=True) + 1e-4 * np.eye(4)
    np.testing.assert_allclose(model.covariance(), expected, rtol=1e-10)


def test_impute_fills_missing_entries_with_conditional_means():
    # One component: the conditional mean is the textbook regression formula.
    X = DATA["iris"][:, :3]
    model = GaussianMixture(1).fit(X)
    mu, sigma = model.means_[0], model.covariances_[0]
    row = X[:2].copy()
    row[0, 2] = np.nan
    row[1, :] = np.nan
    filled = model.impute(row)
    expected = mu[2] + sigma[2, :2] @ np.linalg.solve(
        sigma[:2, :2], row[0, :2] - mu[:2]
    )
    assert filled[0, 2] == pytest.approx(expected, rel=1e-10)
    np.testing.assert_array_equal(filled[0, :2], X[0, :2])
    np.testing.assert_allclose(filled[1], model.mean(), rtol=1e-12)
