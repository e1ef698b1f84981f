"""The Student-t mixture against scipy.stats.multivariate_t, the Gaussian and NumPy.

Every comparison is in float64 (the functional tests turn on x64 for
themselves; the estimators fit float64 data in float64 on their own). Each
new shape or family structure compiles a program, so the data come in few
shapes: (120, 2) for the functional fits and checks, 256 padded rows for the
estimator fits, and one larger data set for the learned degrees of freedom.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import jaxmix
from jaxmix import check
from jaxmix.estimators.student_mixture import StudentMixture
from jaxmix.families.gaussian import Gaussian, GaussianParams
from jaxmix.families.student import StudentT, StudentTParams

KINDS = ("full", "tied", "diag", "spherical")
N, K = 120, 3
CENTRES = np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
SCALES = np.array([[1.0, 0.5], [0.5, 0.5], [0.7, 1.2]])


def t_data(seed=0, dof=4.0):
    """Three clusters of t-distributed points (ν = 4), N × 2."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_t(dof, size=(3, N // 3, 2))
    return (CENTRES[:, None] + SCALES[:, None] * noise).reshape(-1, 2)


def gaussian_data(seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(3, N // 3, 2))
    return (CENTRES[:, None] + SCALES[:, None] * noise).reshape(-1, 2)


def scale_matrix(covariances, kind, k, n_features):
    """Σ_k as a (D, D) matrix from the params' covariance shape."""
    if kind == "full":
        return covariances[k]
    if kind == "tied":
        return covariances
    if kind == "diag":
        return np.diag(covariances[k])
    return covariances[k] * np.eye(n_features)


# ---------------------------------------------------------------------------
# Log densities
# ---------------------------------------------------------------------------


@jax.jit
def _log_density(family, params, X):
    return family.log_component_density(params, X)


@pytest.mark.parametrize("kind", KINDS)
def test_log_density_is_scipy_multivariate_t(kind, x64):
    rng = np.random.default_rng(1)
    n_components, n_features = 3, 3
    factors = rng.normal(size=(n_components, n_features, n_features))
    full = factors @ factors.transpose(0, 2, 1) + np.eye(n_features)
    covariances = {
        "full": full,
        "tied": full[0],
        "diag": rng.uniform(0.5, 2.0, (n_components, n_features)),
        "spherical": rng.uniform(0.5, 2.0, n_components),
    }[kind]
    # Heavy tails, moderate ones and nearly Gaussian ones.
    dof = np.array([0.7, 5.0, 3e4])
    params = StudentTParams(
        jnp.full(n_components, 1 / n_components),
        jnp.asarray(rng.normal(size=(n_components, n_features))),
        jnp.asarray(covariances),
        jnp.asarray(dof),
    )
    X = 2 * rng.standard_t(3, (50, n_features))
    got = np.asarray(_log_density(StudentT(kind), params, jnp.asarray(X)))
    for k in range(n_components):
        reference = stats.multivariate_t(
            params.means[k],
            scale_matrix(covariances, kind, k, n_features),
            df=dof[k],
        ).logpdf(X)
        np.testing.assert_allclose(got[:, k], reference, rtol=1e-11, err_msg=str(k))


# ---------------------------------------------------------------------------
# The M-step
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_m_step_with_learned_dof_passes_the_checker(kind):
    # Some components of the checker's soft splits have ν at its upper bound
    # (no heavy tails); the others are interior stationary points. The
    # checker's L-BFGS search for a higher Q doubles its compile time: it runs
    # for one scale type, the stationarity and perturbation tests for all.
    steps = 100 if kind == "full" else 0
    report = check.check_m_step(StudentT(kind), t_data(), maximize_steps=steps)
    assert report.ok, str(report)
    assert set(report.fields) == {"weights", "means", "covariances", "dof"}
    assert report["dof"].status == "ok"


def _numpy_m_step(X, resp, dof, *, weigh_scatter=True, iterations=2000):
    """A weighted t fit per component with fixed ν, full scales, in NumPy.

    The ECM map iterated to its fixed point: the maximiser of
    Σ r log(π t(x | μ, Σ, ν)) for fixed ν. With ``weigh_scatter=False`` the
    scatter leaves out the u weights (a plausible slip: the means get them).
    """
    n_features = X.shape[1]
    counts = resp.sum(axis=0)
    means = (resp.T @ X) / counts[:, None]
    covariances = np.stack(
        [
            (resp[:, k, None] * (X - means[k])).T @ (X - means[k]) / counts[k]
            for k in range(resp.shape[1])
        ]
    )
    for _ in range(iterations):
        centred = X[:, None, :] - means[None]  # (N, K, D)
        maha = np.einsum(
            "nkd,nkd->nk",
            centred,
            np.linalg.solve(covariances, centred.transpose(1, 2, 0)).transpose(2, 0, 1),
        )
        u = (dof + n_features) / (dof + maha)
        weights_u = resp * u
        new_means = (weights_u.T @ X) / weights_u.sum(axis=0)[:, None]
        scatter_weights = weights_u if weigh_scatter else resp
        new_covariances = np.stack(
            [
                (scatter_weights[:, k, None] * (X - new_means[k])).T
                @ (X - new_means[k])
                / counts[k]
                for k in range(resp.shape[1])
            ]
        )
        moved = max(
            np.max(np.abs(new_means - means)),
            np.max(np.abs(new_covariances - covariances)),
        )
        means, covariances = new_means, new_covariances
        if moved < 1e-14:
            break
    return {
        "weights": counts / counts.sum(),
        "means": means,
        "covariances": covariances,
    }


def test_fixed_dof_m_step_against_numpy_and_a_wrong_one_fails():
    # reg_covar = 0 (the checker's own M-step drops it too), so NumPy's fit
    # is the same maximiser.
    family = StudentT("full", reg_covar=0.0, dof=3.0, learn_dof=False)
    X = t_data(1)
    ours = check.check_m_step(family, X, maximize_steps=0)
    assert ours.ok, str(ours)
    assert ours["dof"].status == "fixed"

    # The same θ_old (the same key), so the same responsibilities: the
    # family's M-step is the fixed point of a NumPy weighted t fit.
    def right(X, resp):
        return _numpy_m_step(X, resp, 3.0)

    reference = check.check_m_step(family, X, right, maximize_steps=0)
    assert reference.ok, str(reference)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            getattr(ours.params, name),
            getattr(reference.params, name),
            rtol=1e-9,
            atol=1e-12,
            err_msg=name,
        )

    def wrong(X, resp):
        return _numpy_m_step(X, resp, 3.0, weigh_scatter=False)

    bad = check.check_m_step(family, X, wrong, maximize_steps=0)
    assert not bad.ok
    assert bad.failed == ("covariances",), str(bad)
    assert "covariances" in str(bad) and "FAILED" in str(bad)


# ---------------------------------------------------------------------------
# The Gaussian limit
# ---------------------------------------------------------------------------


def _start(kind, dof):
    """Three data rows as means, unit scales, equal weights, ν = ``dof``."""
    X = t_data(0)
    kernel = StudentT(kind).kernel
    return StudentTParams(
        jnp.full(K, 1 / K),
        jnp.asarray(X[[0, 50, 100]]),
        kernel.fill(1.0, K, 2, jnp.float64),
        jnp.full(K, dof),
    )


def test_infinite_dof_is_the_gaussian_fit(x64):
    # From the same start, 25 EM steps of the t mixture with a large fixed ν
    # and of the Gaussian mixture. The t steps differ from the Gaussian's by
    # the weights u − 1 = (D − δ)/(ν + δ): the gap shrinks as 1/ν (ν is traced,
    # so both ν run the same compiled program).
    kind = "full"
    X = jnp.asarray(t_data(0))
    start = _start(kind, 1.0)
    gaussian = jaxmix.fit(
        Gaussian(kind), X, GaussianParams(*start[:3]), max_iter=25, tol=0.0
    )
    expected = (*gaussian.params, gaussian.trace)
    gaps = []
    for dof in (1e8, 1e10):
        family = StudentT(kind, dof=dof, learn_dof=False)
        start = start._replace(dof=jnp.full(K, dof))
        result = jaxmix.fit(family, X, start, max_iter=25, tol=0.0)
        assert int(result.n_iter) == int(gaussian.n_iter) == 25
        np.testing.assert_array_equal(result.params.dof, dof)
        got = (*result.params[:3], result.trace)
        gaps.append(max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(got, expected)))
    assert gaps[1] < 1e-7, gaps
    assert 90 < gaps[0] / gaps[1] < 110, gaps


# ---------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------


def _fit(model, X, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every fit here converges
        return model.fit(X, **kwargs)


# Every estimator fit pads its data to 3072 rows and runs 300 iterations at
# most: one compiled program for the k-means start and one for given starts.
MAX_ITER = 300
TRUE_DOF = 4.0
TRUE_MEANS = np.array([[0.0, 0.0], [8.0, 2.0]])
TRUE_SCALES = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.6, -0.2], [-0.2, 1.5]]])


def _given_start(means):
    """A complete start: equal weights, these means, unit precisions, ν = 10."""
    return {
        "weights_init": [0.5, 0.5],
        "means_init": means,
        "precisions_init": np.stack([np.eye(2)] * 2),
        "max_iter": MAX_ITER,
        "random_state": 0,
    }


def _clusters_with_outliers(seed=0):
    """2850 Gaussian points in two clusters and 150 (5%) gross outliers to one side."""
    rng = np.random.default_rng(seed)
    clean_means = np.array([[0.0, 0.0], [6.0, 0.0]])
    clean = np.concatenate([m + rng.normal(size=(1425, 2)) for m in clean_means])
    outliers = np.c_[rng.uniform(20, 35, 150), rng.uniform(-15, 15, 150)]
    return np.concatenate([clean, outliers]), clean_means


def test_outliers_move_the_gaussian_means_not_the_t_means():
    X, clean_means = _clusters_with_outliers()
    start = _given_start(clean_means + [[0.5, -0.5], [-0.5, 0.5]])
    t_model = _fit(StudentMixture(2, **start), X)
    g_model = _fit(jaxmix.GaussianMixture(2, **start), X)
    t_error = np.abs(t_model.means_ - clean_means).max()
    g_error = np.abs(g_model.means_ - clean_means).max()
    assert t_error < 0.1, t_model.means_
    assert g_error > 1.0 and g_error > 10 * t_error, g_model.means_
    # The t model pays for the outliers with its tails, not with its means:
    # the heavier tail is the component next to them.
    assert t_model.dof_[1] < t_model.dof_[0]
    assert t_model.score(X) > g_model.score(X)
    labels = t_model.predict(X[:2850])
    assert np.mean(labels == np.repeat([0, 1], 1425)) > 0.99

    # A warm start continues from the fit (the same compiled program).
    first = t_model.lower_bound_
    _fit(t_model.set_params(warm_start=True, tol=1e-4), X)
    assert t_model.lower_bound_ >= first
    np.testing.assert_allclose(t_model.means_, clean_means, atol=0.1)


def test_integer_sample_weights_equal_repeated_rows():
    X, clean_means = _clusters_with_outliers(1)
    rng = np.random.default_rng(4)
    data = X[rng.permutation(len(X))[:2400]]
    weights = rng.integers(0, 3, len(data))
    assert 2048 < weights.sum() <= 3072  # both pad to 3072 rows: one program
    start = _given_start(clean_means)
    weighted = _fit(StudentMixture(2, **start), data, sample_weight=weights * 1.0)
    repeated = _fit(StudentMixture(2, **start), np.repeat(data, weights, axis=0))
    assert weighted.n_iter_ == repeated.n_iter_
    for name in ("weights_", "means_", "covariances_", "dof_"):
        np.testing.assert_allclose(
            getattr(weighted, name), getattr(repeated, name), rtol=1e-7, err_msg=name
        )


@pytest.fixture(scope="module")
def large_t_sample():
    """2 × 1500 samples of two t components with ν = 4 (scipy's sampler)."""
    parts = [
        stats.multivariate_t(m, s, df=TRUE_DOF).rvs(1500, random_state=k)
        for k, (m, s) in enumerate(zip(TRUE_MEANS, TRUE_SCALES))
    ]
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def fitted(large_t_sample):
    model = StudentMixture(2, random_state=0, tol=1e-8, max_iter=MAX_ITER)
    return _fit(model, large_t_sample)


def test_log_likelihood_never_decreases(fitted):
    # From the k-means start (the fixture) and from a given start far from
    # the maximum, every ECM step raises the log-likelihood.
    X, clean_means = _clusters_with_outliers(2)
    far = _fit(StudentMixture(2, **_given_start(clean_means + [[3, 3], [-3, 2]])), X)
    for model in (fitted, far):
        assert model.n_iter_ > 3
        report = check.check_monotone(np.asarray(model.lower_bounds_))
        assert report.ok, str(report)


def test_learned_dof_recovers_the_generating_dof(fitted):
    order = np.argsort(fitted.means_[:, 0])
    assert fitted.converged_
    np.testing.assert_allclose(fitted.dof_[order], TRUE_DOF, rtol=0.3)
    np.testing.assert_allclose(fitted.means_[order], TRUE_MEANS, atol=0.1)
    np.testing.assert_allclose(fitted.covariances_[order], TRUE_SCALES, atol=0.15)
    np.testing.assert_allclose(fitted.weights_, 0.5, atol=0.01)


def test_scores_are_scipy_multivariate_t(fitted, large_t_sample):
    X = large_t_sample[::7]
    log_joint = np.log(fitted.weights_) + np.stack(
        [
            stats.multivariate_t(
                fitted.means_[k], fitted.covariances_[k], df=fitted.dof_[k]
            ).logpdf(X)
            for k in range(2)
        ],
        axis=1,
    )
    log_norm = logsumexp(log_joint, axis=1)
    np.testing.assert_allclose(fitted.score_samples(X), log_norm, rtol=1e-12)
    assert fitted.score(X) == pytest.approx(log_norm.mean(), rel=1e-12)
    resp = np.exp(log_joint - log_norm[:, None])
    np.testing.assert_allclose(fitted.predict_proba(X), resp, atol=1e-12)
    np.testing.assert_array_equal(fitted.predict(X), np.argmax(log_joint, axis=1))
    # 1 weight, 4 means, 6 scale entries, 2 ν.
    n_parameters = 1 + 4 + 6 + 2
    assert fitted.bic(X) == pytest.approx(
        -2 * log_norm.sum() + n_parameters * np.log(len(X)), rel=1e-12
    )
    assert fitted.aic(X) == pytest.approx(
        -2 * log_norm.sum() + 2 * n_parameters, rel=1e-12
    )
    for k in range(2):
        np.testing.assert_allclose(
            fitted.precisions_[k] @ fitted.covariances_[k], np.eye(2), atol=1e-10
        )


def test_sample_has_the_fitted_distribution(fitted):
    data, labels = fitted.sample(20_000)
    assert data.shape == (20_000, 2) and data.dtype == np.float64
    np.testing.assert_array_equal(np.diff(labels) >= 0, True)  # grouped
    np.testing.assert_allclose(np.bincount(labels) / 20_000, fitted.weights_, atol=0.02)
    for k in range(2):
        part = data[labels == k]
        # Medians of t marginals are the locations; quartiles from scipy.
        np.testing.assert_allclose(np.median(part, axis=0), fitted.means_[k], atol=0.05)
        scale = np.sqrt(np.diag(fitted.covariances_[k]))
        expected = stats.t(fitted.dof_[k]).ppf(0.75) * scale
        upper = np.quantile(part, 0.75, axis=0) - fitted.means_[k]
        np.testing.assert_allclose(upper, expected, rtol=0.06)


def test_bad_dof_is_a_value_error():
    for dof in (0.0, -1.0, np.nan, np.inf, [2.0, -1.0]):
        with pytest.raises(ValueError, match="dof"):
            StudentT(dof=dof)
    with pytest.raises(ValueError, match="min_dof must be below max_dof"):
        StudentT(min_dof=5.0, max_dof=2.0)
    X = t_data()
    for dof in (0.0, -3.0, [2.0, -1.0], [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="dof"):
            StudentMixture(2, dof=dof).fit(X)
    with pytest.raises(ValueError, match="covariance_type"):
        StudentT("banded")
    start = _given_start(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"means_init must have shape \(2, 2\)"):
        StudentMixture(2, **{**start, "means_init": np.zeros((3, 2))}).fit(X)
    with pytest.raises(ValueError, match="symmetric, positive-definite"):
        StudentMixture(2, **{**start, "precisions_init": -np.ones((2, 2, 2))}).fit(X)
