"""Gaussian MAP-EM: posterior modes, log priors, autodiff stationarity, monotonicity."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture

import jaxmix
from jaxmix import GaussianMixture
from jaxmix.engine import em
from jaxmix.estimators.base import _fit_restarts
from jaxmix.families import Gaussian, GaussianParams

TYPES = ("full", "tied", "diag", "spherical")
# Few shapes and static arguments: each new one is a compilation.
K, D, N = 3, 2, 60
FIT_ITER = 30


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


def make_data(seed=0, n_samples=N):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [4.0, 1.0], [1.0, 5.0]])
    labels = np.arange(n_samples) % K
    A = rng.normal(size=(K, D, D)) * 0.5 + np.eye(D)
    return centers[labels] + np.einsum(
        "nd,nde->ne", rng.normal(size=(n_samples, D)), A[labels]
    )


def covariance_prior(covariance_type, scale=0.5):
    psi = scale * np.array([[1.0, 0.3], [0.3, 2.0]])
    return {
        "full": psi,
        "tied": psi,
        "diag": np.diag(psi).copy(),
        "spherical": float(np.mean(np.diag(psi))),
    }[covariance_type]


def map_family(
    covariance_type,
    alpha=2.0,
    kappa=0.5,
    nu=3.0,
    scale=0.5,
    mean=(1.0, -1.0),
    reg_covar=0.0,
):
    return Gaussian(
        covariance_type,
        reg_covar=reg_covar,
        weight_concentration=alpha,
        mean_prior=jnp.asarray(mean),
        mean_precision=kappa,
        degrees_of_freedom=nu,
        covariance_prior=jnp.asarray(covariance_prior(covariance_type, scale)),
    )


def full_matrices(covariances, covariance_type, n_components):
    eye = jnp.eye(D)
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return jnp.broadcast_to(covariances, (n_components, D, D))
    if covariance_type == "diag":
        return covariances[:, :, None] * eye
    return covariances[:, None, None] * eye


# -- single component: the textbook posterior mode -------------------------------
def textbook_mode(X, covariance_type, kappa, mean0, nu, psi):
    """Joint posterior mode of one Gaussian under NIW / normal-inverse-Gamma priors.

    Full and tied (K = 1): the NIW posterior (m_N, κ_N, ν_N, Ψ_N) with
    Ψ_N = Ψ + S + κN/κ_N (x̄ − m)(x̄ − m)ᵀ; its joint mode is (m_N, Ψ_N/(ν_N + D + 2)).
    Diag: per feature a normal-inverse-Gamma NIG(m, κ, a, b) with a = (ν + D − 1)/2,
    b = ψ_d/2, posterior a_N = a + N/2, b_N = b + S/2 + κN(x̄ − m)²/(2κ_N), mode
    σ² = b_N/(a_N + 3/2). Spherical: a = D(ν + D + 1)/2 − 1, b = Dψ/2, a_N = a + ND/2,
    b_N = b + tr S/2 + κN‖x̄ − m‖²/(2κ_N), mode σ² = b_N/(a_N + 1 + D/2).
    """
    n = len(X)
    xbar = X.mean(0)
    centred = X - xbar
    scatter = centred.T @ centred
    kappa_n = kappa + n
    mean_n = (kappa * mean0 + n * xbar) / kappa_n
    dev = xbar - mean0
    if covariance_type in ("full", "tied"):
        psi_n = psi + scatter + kappa * n / kappa_n * np.outer(dev, dev)
        cov = psi_n / (nu + n + D + 2)
        return mean_n, cov[None] if covariance_type == "full" else cov
    if covariance_type == "diag":
        a_n = (nu + D - 1) / 2 + n / 2
        b_n = psi / 2 + np.diag(scatter) / 2 + kappa * n * dev**2 / (2 * kappa_n)
        return mean_n, (b_n / (a_n + 1.5))[None]
    a_n = D * (nu + D + 1) / 2 - 1 + n * D / 2
    b_n = D * psi / 2 + np.trace(scatter) / 2 + kappa * n * dev @ dev / (2 * kappa_n)
    return mean_n, np.array([b_n / (a_n + 1 + D / 2)])


@pytest.mark.parametrize("covariance_type", TYPES)
def test_single_component_is_the_posterior_mode(covariance_type):
    X = make_data(seed=1, n_samples=25)
    kappa, mean0, nu = 0.7, np.array([1.0, -2.0]), 3.5
    psi = covariance_prior(covariance_type)
    family = map_family(covariance_type, kappa=kappa, mean=mean0, nu=nu)
    resp = jnp.ones((len(X), 1))
    params = em.m_step(family, jnp.asarray(X), resp)
    mean_n, cov = textbook_mode(X, covariance_type, kappa, mean0, nu, psi)
    np.testing.assert_allclose(params.means[0], mean_n, rtol=1e-12)
    np.testing.assert_allclose(params.covariances, cov, rtol=1e-12)
    np.testing.assert_allclose(params.weights, [1.0])


# -- the log prior against scipy.stats -------------------------------------------
def scipy_log_prior(params, covariance_type, alpha, kappa, mean0, nu, psi):
    weights, means, covs = (np.asarray(p) for p in params)
    total = stats.dirichlet.logpdf(weights, np.full(K, alpha))
    if covariance_type in ("full", "tied"):
        matrices = covs if covariance_type == "full" else [covs] * K
        for mean, cov in zip(means, matrices, strict=True):
            total += stats.multivariate_normal.logpdf(mean, mean0, cov / kappa)
        for cov in matrices if covariance_type == "full" else [covs]:
            total += stats.invwishart.logpdf(cov, df=nu, scale=psi)
    elif covariance_type == "diag":
        total += stats.norm.logpdf(means, mean0, np.sqrt(covs / kappa)).sum()
        total += stats.invgamma.logpdf(covs, (nu + D - 1) / 2, scale=psi / 2).sum()
    else:
        for mean, var in zip(means, covs, strict=True):
            total += stats.multivariate_normal.logpdf(mean, mean0, var / kappa)
        total += stats.invgamma.logpdf(
            covs, D * (nu + D + 1) / 2 - 1, scale=D * psi / 2
        ).sum()
    return total


def random_params(covariance_type, seed=2):
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(K, 3.0))
    means = rng.normal(size=(K, D))
    A = rng.normal(size=(K, D, D))
    full = A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(D)
    covs = {
        "full": full,
        "tied": full[0],
        "diag": rng.uniform(0.3, 2, (K, D)),
        "spherical": rng.uniform(0.3, 2, K),
    }[covariance_type]
    return GaussianParams(*(jnp.asarray(v) for v in (weights, means, covs)))


@pytest.mark.parametrize("covariance_type", TYPES)
def test_log_prior_matches_scipy(covariance_type):
    alpha, kappa, mean0, nu = 2.5, 0.7, np.array([1.0, -1.0]), 3.5
    family = map_family(covariance_type, alpha=alpha, kappa=kappa, mean=mean0, nu=nu)
    params = random_params(covariance_type)
    expected = scipy_log_prior(
        params,
        covariance_type,
        alpha,
        kappa,
        mean0,
        nu,
        covariance_prior(covariance_type),
    )
    assert float(family.log_prior(params)) == pytest.approx(expected, rel=1e-10)
    assert float(Gaussian(covariance_type).log_prior(params)) == 0.0


# -- autodiff: the MAP M-step is a stationary point of Q + log prior -------------
@pytest.mark.parametrize("covariance_type", TYPES)
def test_map_m_step_is_stationary(covariance_type):
    X = jnp.asarray(make_data(seed=3))
    resp = jnp.asarray(np.random.default_rng(4).dirichlet(np.ones(K), size=N))
    family = map_family(covariance_type)
    start = random_params(covariance_type, seed=5)  # the centring shift
    new = em.m_step(family, X, resp, params=start)

    def objective(log_weights, means, cov_param):
        weights = jax.nn.softmax(log_weights)
        if covariance_type in ("full", "tied"):
            covs = 0.5 * (cov_param + jnp.swapaxes(cov_param, -1, -2))
        else:
            covs = cov_param
        matrices = full_matrices(covs, covariance_type, K)
        log_density = jax.vmap(
            lambda m, c: jax.scipy.stats.multivariate_normal.logpdf(X, m, c),
            out_axes=1,
        )(means, matrices)
        q = jnp.sum(resp * (jnp.log(weights) + log_density))
        return q + family.log_prior(GaussianParams(weights, means, covs))

    gradient = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))
    grads = gradient(jnp.log(new.weights), new.means, new.covariances)
    for name, grad in zip(("weights", "means", "covariances"), grads, strict=True):
        assert float(jnp.max(jnp.abs(grad))) / N < 1e-10, name
    # The prior matters: the ML M-step is not stationary for this objective.
    ml = em.m_step(Gaussian(covariance_type, reg_covar=0.0), X, resp, params=start)
    ml_grads = gradient(jnp.log(ml.weights), ml.means, ml.covariances)
    assert max(float(jnp.max(jnp.abs(g))) for g in ml_grads) / N > 1e-4


# -- EM with priors: monotone, no recompilation, no collapse ---------------------
@settings(max_examples=16, deadline=None)
@given(
    covariance_type=st.sampled_from(TYPES),
    seed=st.integers(0, 2**16),
    alpha=st.floats(1.0, 10.0),
    kappa=st.floats(1e-3, 10.0),
    nu_extra=st.floats(0.0, 10.0),
    scale=st.floats(1e-2, 10.0),
)
def test_map_objective_never_decreases(
    covariance_type, seed, alpha, kappa, nu_extra, scale
):
    X = jnp.asarray(make_data(seed=seed))
    family = map_family(
        covariance_type,
        alpha=alpha,
        kappa=kappa,
        nu=D - 1 + 1e-3 + nu_extra,
        scale=scale,
    )
    params = random_params(covariance_type, seed=seed)
    result = jaxmix.fit(family, X, params, max_iter=FIT_ITER, tol=0.0)
    trace = np.asarray(result.trace)[: int(result.n_iter)]
    assert int(result.status) == jaxmix.MAX_ITER
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))


def test_prior_strength_does_not_recompile():
    X = jnp.asarray(make_data())
    start = random_params("diag")

    def run(**prior):
        return jaxmix.fit(map_family("diag", **prior), X, start, max_iter=FIT_ITER)

    run()
    before = em._fit_jit._cache_size()
    weak = run(alpha=1.0, kappa=1e-3, nu=1.5, scale=1e-3)
    strong = run(alpha=20.0, kappa=100.0, nu=50.0, scale=10.0, mean=(3.0, 3.0))
    assert em._fit_jit._cache_size() == before
    assert not np.allclose(weak.params.covariances, strong.params.covariances)

    Xn = make_data()
    GaussianMixture(K, covariance_prior=[1.0, 1.0], **diag_start(Xn)).fit(Xn)
    before = _fit_restarts._cache_size()
    start = diag_start(Xn) | dict(weight_concentration_prior=4.0)
    GaussianMixture(
        K,
        covariance_prior=[5.0, 0.1],
        mean_precision_prior=3.0,
        degrees_of_freedom_prior=7.0,
        **start,
    ).fit(Xn)
    assert _fit_restarts._cache_size() == before


def collapsing_data(covariance_type="full"):
    """Three identical points and a cloud, with a start that separates them."""
    rng = np.random.default_rng(6)
    X = np.vstack([rng.normal(size=(40, D)), np.tile([[5.0, 5.0]], (3, 1))])
    precisions = {
        "full": np.stack([np.eye(D)] * 2),
        "tied": np.eye(D),
        "diag": np.ones((2, D)),
        "spherical": np.ones(2),
    }[covariance_type]
    start = dict(
        weights_init=[0.5, 0.5],
        means_init=[[0.0, 0.0], [5.0, 5.0]],
        precisions_init=precisions,
        covariance_type=covariance_type,
    )
    return X, start


def test_ml_collapses_on_repeated_points():
    X, start = collapsing_data()
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        GaussianMixture(2, reg_covar=0.0, **start).fit(X)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_prior_keeps_a_collapsing_component_well_conditioned(covariance_type):
    X, start = collapsing_data(covariance_type)
    nu = 2.0
    psi = covariance_prior(covariance_type, scale=0.2)
    model = GaussianMixture(
        2,
        reg_covar=0.0,
        mean_prior=X.mean(0),
        mean_precision_prior=1e-2,
        degrees_of_freedom_prior=nu,
        covariance_prior=psi,
        **start,
    ).fit(X)
    assert model.converged_
    # Ψ₀ + (positive semi-definite terms) over at most ν₀ + N + D + 1 + K:
    # every covariance is bounded below by Ψ₀ / (ν₀ + N + D + 3) in Loewner order.
    psi_min = np.linalg.eigvalsh(psi).min() if np.ndim(psi) == 2 else np.min(psi)
    floor = psi_min / (nu + len(X) + D + 3)
    matrices = np.asarray(
        full_matrices(jnp.asarray(model.covariances_), covariance_type, 2)
    )
    assert np.linalg.eigvalsh(matrices).min() >= floor
    assert np.all(np.isfinite(model.precisions_cholesky_))
    # The repeated points keep a component of their own.
    labels = model.predict(X)
    assert len(set(labels[-3:])) == 1 and labels[-1] not in labels[:40]


def diag_start(X):
    """A fixed diagonal start: no initialisation to compile."""
    return dict(
        weights_init=np.full(K, 1 / K),
        means_init=X[:K],
        precisions_init=np.ones((K, D)),
        covariance_type="diag",
        weight_concentration_prior=1.0,
    )


def _fit_to_max_iter(model, X):
    """Fit with tol=0, which runs to max_iter and warns that it did not converge."""
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        return model.fit(X)


def _sklearn_prior_defaults(X, covariance_type):
    """The normal-inverse-Wishart defaults of scikit-learn's BayesianGaussianMixture.

    Read from its fitted attributes: scikit-learn computes them from the data
    in ``fit`` (one iteration is enough).
    """
    reference = BayesianGaussianMixture(
        n_components=K, covariance_type=covariance_type, max_iter=1, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # scikit-learn's own
        reference.fit(X)
    return dict(
        mean_precision=reference.mean_precision_prior_,
        mean_prior=reference.mean_prior_,
        degrees_of_freedom=reference.degrees_of_freedom_prior_,
        covariance_prior=reference.covariance_prior_,
    )


@pytest.mark.parametrize("covariance_type", TYPES)
def test_prior_defaults_are_scikit_learns(covariance_type):
    # If any normal-inverse-Wishart prior is given, the others default to
    # BayesianGaussianMixture's: κ₀ = 1, m₀ the data mean, ν₀ = D and Ψ₀ the
    # data covariance in the covariance type's shape. (Its Dirichlet default
    # is not comparable: jaxmix's is a MAP prior, None by default.) Wrong
    # defaults this catches: the biased covariance, Ψ₀ = I, ν₀ = D + 2, the
    # mean variance for diag or the full matrix for spherical.
    X = make_data(seed=5)
    defaults = _sklearn_prior_defaults(X, covariance_type)
    given = {
        "mean_precision_prior": ("mean_precision", 2.0),
        "covariance_prior": ("covariance_prior", covariance_prior(covariance_type)),
    }
    for argument, (field, value) in given.items():
        model = GaussianMixture(K, covariance_type=covariance_type, **{argument: value})
        # The family the fit would run with (priors resolved against X).
        family = model._make_family(X)
        for name, expected in defaults.items():
            got = np.asarray(getattr(family, name))
            np.testing.assert_allclose(
                got, value if name == field else expected, rtol=1e-12, err_msg=name
            )


def test_defaulted_priors_fit_like_scikit_learns_values_spelled_out():
    X = make_data()
    defaults = _sklearn_prior_defaults(X, "diag")
    kwargs = dict(tol=0.0, **diag_start(X))
    implicit = _fit_to_max_iter(
        GaussianMixture(K, covariance_prior=[1.0, 2.0], **kwargs), X
    )
    explicit = _fit_to_max_iter(
        GaussianMixture(
            K,
            covariance_prior=[1.0, 2.0],
            mean_prior=defaults["mean_prior"],
            mean_precision_prior=defaults["mean_precision"],
            degrees_of_freedom_prior=defaults["degrees_of_freedom"],
            **kwargs,
        ),
        X,
    )
    data_cov = _fit_to_max_iter(
        GaussianMixture(K, mean_precision_prior=1.0, **kwargs), X
    )
    explicit_cov = _fit_to_max_iter(
        GaussianMixture(K, covariance_prior=defaults["covariance_prior"], **kwargs), X
    )
    np.testing.assert_allclose(implicit.covariances_, explicit.covariances_, rtol=1e-12)
    np.testing.assert_allclose(
        data_cov.covariances_, explicit_cov.covariances_, rtol=1e-12
    )
    assert implicit.lower_bound_ == pytest.approx(explicit.lower_bound_, rel=1e-12)
    assert "covariance_prior" in implicit.get_params()


@pytest.mark.parametrize("offset, rtol", [(0.0, 1e-5), (1e3, 3e-4)])
def test_float32_map_fit_close_to_float64(offset, rtol):
    # The same float32-rounded data and start, fitted in float32 and float64:
    # the gap is float32 round-off only, measured at 4e-7 (relative, and
    # absolute on the means) at the origin and 3e-5 at an offset of 1e3, where
    # the data's own ulp is 6e-5. The bounds are ten times that or more; they
    # fail if the float32 path drops the prior (a 50% change here) or
    # mis-scales it, or forms uncentred second moments (which lose about
    # eps · 1e6 = 0.06 of a unit variance at 1e3).
    X32 = (make_data() + offset).astype(np.float32)
    kwargs = dict(tol=0.0, covariance_prior=[0.5, 0.5], **diag_start(X32))
    single = _fit_to_max_iter(GaussianMixture(K, **kwargs), X32)
    double = _fit_to_max_iter(GaussianMixture(K, **kwargs), X32.astype(np.float64))
    assert single.means_.dtype == np.float32 and single.covariances_.dtype == np.float32
    np.testing.assert_allclose(single.weights_, double.weights_, rtol=rtol)
    np.testing.assert_allclose(
        single.means_ - offset, double.means_ - offset, atol=rtol
    )
    np.testing.assert_allclose(single.covariances_, double.covariances_, rtol=rtol)
    assert single.lower_bound_ == pytest.approx(double.lower_bound_, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weight_concentration_prior=0.5), "weight_concentration_prior"),
        (dict(weight_concentration_prior=[2.0, 2.0]), "weight_concentration_prior"),
        (dict(mean_precision_prior=0.0), "mean_precision_prior"),
        (dict(mean_precision_prior=-1.0), "mean_precision_prior"),
        (dict(mean_prior=[0.0, 0.0, 0.0]), "mean_prior"),
        (dict(mean_prior=[np.nan, 0.0]), "mean_prior"),
        (dict(degrees_of_freedom_prior=D - 1), "degrees_of_freedom_prior"),
        (dict(covariance_prior=np.ones(D)), "covariance_prior"),
        (dict(covariance_prior=np.array([[1.0, 2.0], [2.0, 1.0]])), "positive"),
        (dict(covariance_prior=np.array([[1.0, 0.5], [0.0, 1.0]])), "symmetric"),
        (dict(covariance_type="diag", covariance_prior=[1.0, -1.0]), "positive"),
        (dict(covariance_type="diag", covariance_prior=np.eye(D)), "shape"),
        (dict(covariance_type="spherical", covariance_prior=-1.0), "covariance_prior"),
        (dict(covariance_type="spherical", covariance_prior=[1.0]), "covariance_prior"),
    ],
)
def test_bad_priors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(K, **kwargs).fit(make_data())


def test_family_needs_the_whole_normal_inverse_wishart():
    with pytest.raises(ValueError, match="together"):
        Gaussian("full", mean_prior=jnp.zeros(D), mean_precision=1.0)
    with pytest.raises(ValueError, match="fixed variance"):
        Gaussian(
            "spherical",
            variance=1.0,
            mean_prior=jnp.zeros(D),
            mean_precision=1.0,
            degrees_of_freedom=2.0,
            covariance_prior=1.0,
        )
