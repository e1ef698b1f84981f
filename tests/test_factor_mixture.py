"""Mixtures of factor analysers against independent references, in float64.

References: scipy's multivariate normal density with covariance ΛΛᵀ + Ψ,
scikit-learn's ``FactorAnalysis`` (one component, diagonal noise) and ``PCA``
(one component, isotropic noise: probabilistic PCA in closed form), a NumPy
weighted factor analysis written here, the rank of the model's Jacobian (for
the parameter count), and autodiff through :func:`jaxmix.check.check_m_step`.

Every fit has N = 240 samples (padded to 256) and D = 6 features, so the
estimator's programs are few: one per (K, noise type, start kind).
"""

from __future__ import annotations

import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp
from sklearn.decomposition import PCA, FactorAnalysis

import jaxmix
from jaxmix import check
from jaxmix.estimators.factor_mixture import FactorMixture
from jaxmix.families.factor import NOISE_TYPES, FactorAnalyzer, FactorParams

N, D, Q, K = 240, 6, 2, 3
MAX_ITER = 400
STEPS = 20  # L-BFGS steps of the M-step checks (one compiled checker)
LOADINGS = np.array(
    [[2.0, 0.0], [1.5, 1.0], [1.0, -1.5], [0.0, 2.0], [-1.0, 1.0], [1.0, 1.0]]
)
NOISE = np.array([0.3, 0.5, 0.4, 0.3, 0.6, 0.5])


def one_analyser(seed=0):
    """N samples of one factor analyser, x = 3 + Λz + ε."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(N, Q))
    return 3.0 + factors @ LOADINGS.T + rng.normal(size=(N, D)) * np.sqrt(NOISE)


def shared_factors(seed=0):
    """Three clusters along two factors shared by all: every soft blend of them
    is itself a two-factor model, so weighted fits stay away from Heywood cases.
    """
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0, 0.0], [-1.5, 2.5], [-1.5, -2.5]])
    factors = centres[np.arange(N) % K] + rng.normal(size=(N, Q))
    return 5.0 + factors @ LOADINGS.T + rng.normal(size=(N, D)) * np.sqrt(NOISE)


def three_analysers(seed=0):
    """Three well-separated clusters, each with its own loadings and noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(N) % K
    loadings = np.stack([LOADINGS, LOADINGS[::-1], np.roll(LOADINGS, 2, axis=0)])
    means = 8.0 * rng.normal(size=(K, D))
    noise = rng.uniform(0.2, 0.8, size=(K, D))
    factors = rng.normal(size=(N, Q))
    X = means[labels] + np.einsum("nde,ne->nd", loadings[labels], factors)
    return X + rng.normal(size=(N, D)) * np.sqrt(noise[labels])


def noise_per_feature(noise, noise_type, n_components):
    noise = np.asarray(noise)
    if noise_type == "diag":
        return noise
    if noise_type == "tied_diag":
        return np.broadcast_to(noise, (n_components, D))
    return np.broadcast_to(noise[:, None], (n_components, D))


def covariances(loadings, noise, noise_type):
    """ΛΛᵀ + Ψ in NumPy, (K, D, D)."""
    psi = noise_per_feature(noise, noise_type, loadings.shape[0])
    return loadings @ np.swapaxes(loadings, 1, 2) + psi[..., None] * np.eye(D)


def random_params(rng, noise_type, n_components=K):
    shape = {"diag": (n_components, D), "tied_diag": (D,), "isotropic": (n_components,)}
    return FactorParams(
        weights=rng.dirichlet(np.ones(n_components)),
        means=rng.normal(size=(n_components, D)),
        loadings=rng.normal(size=(n_components, D, Q)),
        noise_variances=rng.uniform(0.3, 1.5, size=shape[noise_type]),
    )


def given_start(X, noise_type, seed=0):
    """A start with every field given (no initialisation program): spread-out
    samples as means, generic loadings, the data's variances as noise."""
    rng = np.random.default_rng(seed)
    order = np.argsort(X @ np.linspace(1.0, 2.0, D))
    variance = X.var(axis=0)
    noise = {
        "diag": np.tile(variance, (K, 1)),
        "tied_diag": variance,
        "isotropic": np.full(K, variance.mean()),
    }[noise_type]
    return dict(
        weights_init=np.full(K, 1.0 / K),
        means_init=X[order[np.linspace(0, N - 1, K).astype(int)]],
        loadings_init=rng.normal(size=(K, D, Q)),
        noise_variances_init=noise,
    )


def fit_quietly(model, X, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached on purpose, tol = 0
        return model.fit(X, **kwargs)


@pytest.fixture(scope="module")
def fitted() -> FactorMixture:
    """K = 3, diagonal noise, from a given start: 60 iterations at tol = 0."""
    X = three_analysers()
    model = FactorMixture(
        K, n_factors=Q, tol=0.0, max_iter=60, random_state=0, **given_start(X, "diag")
    )
    return fit_quietly(model, X)


# ---------------------------------------------------------------------------
# The family: density, parameter count, M-step, blocks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_log_density_is_scipy_multivariate_normal(noise_type, x64):
    rng = np.random.default_rng(1)
    family = FactorAnalyzer(n_factors=Q, noise_type=noise_type)
    params = random_params(rng, noise_type)
    X = rng.normal(size=(50, D)) * 3
    log_density = jax.jit(family.log_component_density)(
        jax.tree.map(jnp.asarray, params), jnp.asarray(X)
    )
    sigma = covariances(params.loadings, params.noise_variances, noise_type)
    expected = np.stack(
        [
            stats.multivariate_normal(params.means[k], sigma[k]).logpdf(X)
            for k in range(K)
        ],
        axis=1,
    )
    np.testing.assert_allclose(np.asarray(log_density), expected, rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(family.covariances(jax.tree.map(jnp.asarray, params))),
        sigma,
        rtol=1e-14,
    )


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_parameter_count_is_the_rank_of_the_model(noise_type, x64):
    # The free parameters are the dimension of the set of mixtures the model
    # reaches: the rank of the Jacobian of (π, μ_k, Σ_k) with respect to
    # (π, μ, Λ, Ψ) at a generic point. Λ → ΛR leaves Σ unchanged, which
    # removes q(q−1)/2 per component from the naive count.
    n_components = 2
    family = FactorAnalyzer(n_factors=Q, noise_type=noise_type)
    params = random_params(np.random.default_rng(2), noise_type, n_components)
    rows, cols = np.tril_indices(D)

    def model_point(flat):
        p = unravel(flat)
        sigma = family.covariances(p)
        return jnp.concatenate(
            [p.weights[:-1], p.means.ravel(), sigma[:, rows, cols].ravel()]
        )

    flat, unravel = jax.flatten_util.ravel_pytree(jax.tree.map(jnp.asarray, params))
    # The weights' sum is fixed: one direction of the flat weights is not free.
    jacobian = np.asarray(jax.jit(jax.jacfwd(model_point))(flat))
    rank = np.linalg.matrix_rank(jacobian, tol=1e-8 * np.abs(jacobian).max())
    assert family.n_parameters(n_components, D) == rank
    naive = {"diag": 2 * D, "tied_diag": D, "isotropic": 2}[noise_type]
    assert rank == 1 + 2 * D + 2 * (D * Q - Q * (Q - 1) // 2) + naive


def weighted_factor_analysis(X, weights, n_iter=5000):
    """Weighted ML factor analysis of one component, in plain NumPy.

    The classic EM of Rubin & Thayer on the weighted scatter S (D×D):
    β = Λᵀ(ΛΛᵀ + Ψ)⁻¹, Λ ← Sβᵀ(I − βΛ + βSβᵀ)⁻¹, Ψ ← diag(S − ΛβS),
    until Ψ stops moving.
    """
    total = weights.sum()
    mean = weights @ X / total
    centred = X - mean
    scatter = (centred * weights[:, None]).T @ centred / total
    loadings = np.linalg.cholesky(scatter)[:, :Q]
    noise = np.diag(scatter) / 2
    for _ in range(n_iter):
        beta = np.linalg.solve(loadings @ loadings.T + np.diag(noise), loadings).T
        inner = np.eye(Q) - beta @ loadings + beta @ scatter @ beta.T
        loadings = np.linalg.solve(inner.T, (scatter @ beta.T).T).T
        previous, noise = noise, np.diag(scatter - loadings @ beta @ scatter)
        if np.max(np.abs(noise - previous)) < 1e-15 * np.max(noise):
            break
    return mean, loadings, noise


def numpy_m_step(X, resp, noise_variances=None, loadings_scale=1.0):
    """Weights, means and weighted factor analyses per component (diag noise);
    ``noise_variances`` and ``loadings_scale`` make it wrong on purpose."""
    counts = resp.sum(0)
    fits = [weighted_factor_analysis(X, resp[:, k]) for k in range(resp.shape[1])]
    means, loadings, noise = (np.stack(parts) for parts in zip(*fits))
    if noise_variances is not None:
        noise = noise_variances(X, resp, means)
    return {
        "weights": counts / counts.sum(),
        "means": means,
        "loadings": loadings_scale * loadings,
        "noise_variances": noise,
    }


def plain_variances(X, resp, means):
    """diag(S_k): the noise taking the whole variance (a plausible slip)."""
    centred = X[None] - means[:, None]
    return np.einsum("nk,knd->kd", resp, centred**2) / resp.sum(0)[:, None]


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_m_step_passes_the_autodiff_check(noise_type):
    report = check.check_m_step(
        FactorAnalyzer(n_factors=Q, noise_type=noise_type),
        shared_factors(),
        maximize_steps=STEPS if noise_type == "diag" else 0,
    )
    assert report.ok, str(report)
    for name in ("loadings", "noise_variances"):
        assert report[name].relative_gap < 1e-8, str(report)


def test_numpy_m_steps_right_and_wrong():
    # Without a ridge, so that the checks of the NumPy M-steps draw the same
    # θ_old as the check of the family's own M-step (which drops the ridge).
    family = FactorAnalyzer(n_factors=Q, reg_covar=0.0)
    X = shared_factors()
    right = check.check_m_step(family, X, numpy_m_step, maximize_steps=STEPS)
    assert right.ok, str(right)
    # The family's fit at fixed responsibilities is the same maximiser
    # (compared through ΛΛᵀ + Ψ: Λ is determined up to a rotation).
    own = check.check_m_step(family, X, maximize_steps=0).params
    np.testing.assert_allclose(
        covariances(own.loadings, own.noise_variances, "diag"),
        covariances(right.params.loadings, right.params.noise_variances, "diag"),
        rtol=1e-7,
    )
    wrong_noise = check.check_m_step(
        family,
        X,
        lambda X, r: numpy_m_step(X, r, noise_variances=plain_variances),
        maximize_steps=STEPS,
    )
    assert not wrong_noise.ok
    assert "noise_variances" in wrong_noise.failed
    assert {"weights", "means"}.isdisjoint(wrong_noise.failed)
    assert "noise_variances  FAILED" in str(wrong_noise)
    wrong_loadings = check.check_m_step(
        family,
        X,
        lambda X, r: numpy_m_step(X, r, loadings_scale=1.1),
        maximize_steps=STEPS,
    )
    assert "loadings" in wrong_loadings.failed
    assert "loadings         FAILED" in str(wrong_loadings)


def test_blocks_and_vmap_match_one_block(x64):
    family = FactorAnalyzer(n_factors=Q)
    X = jnp.asarray(three_analysers())
    params = jax.tree.map(jnp.asarray, random_params(np.random.default_rng(3), "diag"))
    # Statistics add up over blocks of samples.
    resp = jax.nn.softmax(jnp.asarray(np.random.default_rng(4).normal(size=(N, K))))
    statistics = jax.jit(family.statistics)
    whole = statistics(params, X, resp)
    halves = jax.tree.map(
        jnp.add,
        statistics(params, X[:120], resp[:120]),
        statistics(params, X[120:], resp[120:]),
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
        halves,
        whole,
    )
    one = jaxmix.fit(family, X, params, max_iter=20, tol=0.0)
    blocks = jaxmix.fit(family, X, params, max_iter=20, tol=0.0, chunk_size=64)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(blocks)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # vmap over two starts gives each start's own fit.
    other = jax.tree.map(jnp.asarray, random_params(np.random.default_rng(5), "diag"))
    starts = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other)
    batched = jax.vmap(lambda p: jaxmix.fit(family, X, p, max_iter=20, tol=0.0))(starts)
    alone = jaxmix.fit(family, X, other, max_iter=20, tol=0.0)
    for a, b, c in zip(
        jax.tree.leaves(batched), jax.tree.leaves(one), jax.tree.leaves(alone)
    ):
        np.testing.assert_allclose(a[0], b, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a[1], c, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# One component: scikit-learn's factor analysis and probabilistic PCA
# ---------------------------------------------------------------------------


def test_one_component_is_scikit_learn_factor_analysis():
    X = one_analyser()
    reference = FactorAnalysis(Q, tol=1e-12, max_iter=10_000, svd_method="lapack")
    reference.fit(X)
    # From a poor start, which only the EM iterations move (the start of a
    # fit, a weighted factor analysis, is compared with a NumPy one in
    # test_numpy_m_steps_right_and_wrong). No ridge: the maximum-likelihood
    # noise variances themselves are compared.
    rng = np.random.default_rng(6)
    model = FactorMixture(
        1,
        n_factors=Q,
        tol=1e-13,
        max_iter=MAX_ITER,
        reg_covar=0.0,
        weights_init=[1.0],
        means_init=X[:1],
        loadings_init=rng.normal(size=(1, D, Q)),
        noise_variances_init=np.ones((1, D)),
    ).fit(X)
    # EM converges linearly: stopped at a change of 1e-13 in the mean
    # log-likelihood, the parameters are within ~1e-5 of the maximum.
    assert model.converged_
    assert model.score(X) == pytest.approx(reference.score(X), abs=1e-11)
    np.testing.assert_allclose(
        model.covariances_[0], reference.get_covariance(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(model.means_[0], X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        model.noise_variances_[0], reference.noise_variance_, rtol=1e-4
    )
    # The canonical rotation is scikit-learn's (no rotation), up to signs.
    signs = np.sign(np.sum(model.loadings_[0] * reference.components_.T, axis=0))
    np.testing.assert_allclose(
        model.loadings_[0] * signs, reference.components_.T, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        model.factor_scores(X)[:, 0] * signs,
        reference.transform(X),
        rtol=1e-4,
        atol=1e-5,
    )


def test_isotropic_one_component_is_probabilistic_pca():
    X = one_analyser(1)
    model = FactorMixture(
        1,
        n_factors=Q,
        noise_type="isotropic",
        init_params="random",
        tol=1e-13,
        max_iter=MAX_ITER,
        reg_covar=0.0,
    ).fit(X)
    assert model.converged_
    # PCA's closed-form probabilistic PCA (Tipping & Bishop), rescaled from
    # its unbiased variances (÷ (N − 1)) to the maximum likelihood (÷ N).
    pca = PCA(Q, svd_solver="full").fit(X)
    pca.explained_variance_ *= (N - 1) / N
    pca.noise_variance_ *= (N - 1) / N
    assert model.score(X) == pytest.approx(pca.score(X), abs=1e-6)
    np.testing.assert_allclose(
        model.score_samples(X), pca.score_samples(X), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(model.covariances_[0], pca.get_covariance(), rtol=1e-6)
    assert model.noise_variances_[0] == pytest.approx(pca.noise_variance_, rel=1e-6)


# ---------------------------------------------------------------------------
# Several components: monotone EM, the fitted model, scikit-learn's interface
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_log_likelihood_never_decreases(noise_type, fitted):
    X = three_analysers()
    if noise_type == "diag":
        model = fitted
    else:
        model = fit_quietly(
            FactorMixture(
                K,
                n_factors=Q,
                noise_type=noise_type,
                tol=0.0,
                max_iter=60,
                **given_start(X, noise_type),
            ),
            X,
        )
    trace = np.asarray(model.lower_bounds_)
    assert len(trace) == 60
    report = check.check_monotone(trace)
    assert report.ok, str(report)
    assert trace[-1] - trace[0] > 1.0  # it did climb
    assert np.all(np.isfinite(trace))


def test_bic_over_components_and_factors(x64):
    # Model selection over K and q: one sweep row per number of factors. Each
    # cell is the ordinary K-component fit from the same key, and its BIC
    # counts the family's parameters; on three clusters of two-factor data
    # the sweep picks K = 3, q = 2.
    X = three_analysers()
    families = [FactorAnalyzer(n_factors=q) for q in (1, 2)]
    key = jax.random.key(3)
    sweep = jaxmix.select_n_components(families, X, key, K, max_iter=80)
    assert sweep.labels == ("factor-diag-q1", "factor-diag-q2")
    assert (sweep.best_family.n_factors, sweep.best_n_components) == (2, K)
    separate = jaxmix.fit_restarts(
        families[1], X, jax.random.split(key, K)[K - 1], K, 1, max_iter=80
    )
    log_lik = N * float(separate.best.log_likelihood)
    np.testing.assert_allclose(sweep.log_likelihood[1, K - 1], log_lik, rtol=1e-9)
    n_params = families[1].n_parameters(K, D)
    np.testing.assert_allclose(
        sweep.bic[1, K - 1], -2 * log_lik + n_params * np.log(N), rtol=1e-9
    )


def test_fitted_model_scores_as_a_gaussian_mixture(fitted):
    X = three_analysers()
    sigma = covariances(fitted.loadings_, fitted.noise_variances_, "diag")
    np.testing.assert_allclose(fitted.covariances_, sigma, rtol=1e-12)
    log_joint = np.log(fitted.weights_) + np.stack(
        [
            stats.multivariate_normal(fitted.means_[k], sigma[k]).logpdf(X)
            for k in range(K)
        ],
        axis=1,
    )
    log_norm = logsumexp(log_joint, axis=1)
    np.testing.assert_allclose(fitted.score_samples(X), log_norm, rtol=1e-10)
    assert fitted.score(X) == pytest.approx(log_norm.mean(), rel=1e-10)
    np.testing.assert_allclose(
        fitted.predict_proba(X), np.exp(log_joint - log_norm[:, None]), atol=1e-10
    )
    np.testing.assert_array_equal(fitted.predict(X), np.argmax(log_joint, axis=1))
    # The three clusters (rows k, k + 3, ...) are found.
    labels = fitted.predict(X)
    assert len({tuple(labels[k::K]) for k in range(K)}) == K
    assert all(len(set(labels[k::K])) == 1 for k in range(K))
    n_parameters = (K - 1) + K * D + K * (D * Q - 1) + K * D
    assert fitted.bic(X) == pytest.approx(
        -2 * log_norm.sum() + n_parameters * np.log(N), rel=1e-10
    )
    assert fitted.aic(X) == pytest.approx(
        -2 * log_norm.sum() + 2 * n_parameters, rel=1e-10
    )
    # Canonical loadings: ΛᵀΨ⁻¹Λ diagonal and decreasing.
    for k in range(K):
        scaled = fitted.loadings_[k] / np.sqrt(fitted.noise_variances_[k])[:, None]
        inner = scaled.T @ scaled
        assert abs(inner[0, 1]) < 1e-10 * inner[0, 0]
        assert inner[0, 0] >= inner[1, 1]
    # Factor scores: M⁻¹ΛᵀΨ⁻¹(x − μ) per component.
    scores = fitted.factor_scores(X[:5])
    for k in range(K):
        lam, psi = fitted.loadings_[k], fitted.noise_variances_[k]
        m = np.eye(Q) + lam.T @ (lam / psi[:, None])
        expected = np.linalg.solve(
            m, (lam / psi[:, None]).T @ (X[:5] - fitted.means_[k]).T
        )
        np.testing.assert_allclose(scores[:, k], expected.T, rtol=1e-10)


def test_mixture_algebra_and_sampling(fitted):
    sigma = fitted.covariances_
    mean = fitted.weights_ @ fitted.means_
    np.testing.assert_allclose(fitted.mean(), mean, rtol=1e-12)
    spread = fitted.means_ - mean
    expected = np.einsum("k,kde->de", fitted.weights_, sigma) + np.einsum(
        "k,kd,ke->de", fitted.weights_, spread, spread
    )
    np.testing.assert_allclose(fitted.covariance(), expected, rtol=1e-10)
    X = three_analysers()[:4].copy()
    full = fitted.impute(X)
    np.testing.assert_array_equal(full, X)
    X[0, 2] = X[1, :3] = np.nan
    imputed = fitted.impute(X)
    assert np.all(np.isfinite(imputed))
    observed = ~np.isnan(X)
    np.testing.assert_array_equal(imputed[observed], X[observed])
    # One missing feature of a sample that one component explains: the
    # conditional mean of that component, μ_u + Σ_uo Σ_oo⁻¹ (x_o − μ_o).
    k = fitted.predict(three_analysers()[:1])[0]
    o = [0, 1, 3, 4, 5]
    gain = np.linalg.solve(sigma[k][np.ix_(o, o)], sigma[k][o, 2])
    expected = fitted.means_[k, 2] + gain @ (X[0, o] - fitted.means_[k, o])
    assert imputed[0, 2] == pytest.approx(expected, rel=1e-6)

    samples, labels = fitted.sample(30_000)
    assert samples.shape == (30_000, D) and samples.dtype == np.float64
    np.testing.assert_array_equal(np.diff(labels) >= 0, True)
    np.testing.assert_allclose(
        np.bincount(labels, minlength=K) / 30_000, fitted.weights_, atol=0.015
    )
    for k in range(K):
        # Within five standard errors of the sample mean and of the sample
        # covariance of normal draws: Var(S_ij) = (σ_ii σ_jj + σ_ij²) / n.
        part = samples[labels == k]
        n_k, variances = part.shape[0], np.diag(sigma[k])
        error = np.abs(part.mean(0) - fitted.means_[k])
        assert np.all(error < 5 * np.sqrt(variances / n_k)), error
        error = np.abs(np.cov(part.T) - sigma[k])
        spread = np.sqrt((np.outer(variances, variances) + sigma[k] ** 2) / n_k)
        assert np.all(error < 5 * spread), error / spread
    with pytest.raises(ValueError, match="at least one sample"):
        fitted.sample(0)


def test_warm_start_and_given_start_continue_the_fit(fitted):
    X = three_analysers()
    # All fields given from the fitted model: the same program as `fitted`.
    again = fit_quietly(
        FactorMixture(
            K,
            n_factors=Q,
            tol=0.0,
            max_iter=60,
            weights_init=fitted.weights_,
            means_init=fitted.means_,
            loadings_init=fitted.loadings_,
            noise_variances_init=fitted.noise_variances_,
        ),
        X,
    )
    assert again.lower_bounds_[0] == pytest.approx(fitted.score(X), abs=1e-10)
    assert again.lower_bound_ >= fitted.lower_bound_ - 1e-12


def test_float32_far_from_the_origin():
    # Offset data in float32: the fit runs in coordinates centred at the
    # data's mean, and the noise update is a sum of terms of the noise's size.
    # Against the same fit in float64: float32 holds the data to ~6e-5
    # (offset 1e3) against a noise of standard deviation ≥ 0.45, and the fit
    # agrees to 2e-5 in the noise variances (measured), tested at 1e-4.
    X = three_analysers() + 1000.0
    start = given_start(X, "diag")
    kwargs = dict(n_factors=Q, tol=0.0, max_iter=60)
    single = fit_quietly(FactorMixture(K, **kwargs, **start), X.astype(np.float32))
    double = fit_quietly(FactorMixture(K, **kwargs, **start), X)
    assert single.means_.dtype == single.loadings_.dtype == np.float32
    assert np.all(np.isfinite(single.lower_bounds_))
    np.testing.assert_allclose(
        single.lower_bounds_, double.lower_bounds_, rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(
        single.covariances_, double.covariances_, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        single.noise_variances_, double.noise_variances_, rtol=1e-4
    )


def test_bad_input_says_what_is_wrong(fitted):
    X = three_analysers()
    for n_factors in (D, D + 1):
        with pytest.raises(
            ValueError, match="n_factors must be a positive integer below n_features"
        ):
            FactorMixture(2, n_factors=n_factors).fit(X)
    with pytest.raises(ValueError, match="n_features = 1"):
        FactorMixture(1).fit(X[:, :1])
    for n_factors in (0, 1.5, "2"):
        with pytest.raises(ValueError, match="'n_factors' parameter"):
            FactorMixture(2, n_factors=n_factors).fit(X)
    with pytest.raises(ValueError, match="'noise_type' parameter"):
        FactorMixture(2, noise_type="full").fit(X)
    with pytest.raises(ValueError, match="Expected n_samples >= n_components"):
        FactorMixture(5).fit(X[:3])
    cases = {
        "loadings_init": (np.ones((K, D, Q + 1)), r"loadings_init must have shape"),
        "noise_variances_init": (np.ones(D), r"noise_variances_init .* shape"),
        "means_init": (np.full((K, D), np.nan), "means_init contains NaN"),
        "weights_init": ([0.5, 0.6, 0.1], "weights_init must sum to 1"),
    }
    for name, (value, match) in cases.items():
        with pytest.raises(ValueError, match=match):
            FactorMixture(K, n_factors=Q, **{name: value}).fit(X)
    with pytest.raises(ValueError, match="must be > 0"):
        FactorMixture(K, n_factors=Q, noise_variances_init=np.zeros((K, D))).fit(X)
    with pytest.raises(ValueError, match="noise_type must be one of"):
        FactorAnalyzer(noise_type="spherical")
    with pytest.raises(ValueError, match="n_factors must be a positive integer"):
        FactorAnalyzer(n_factors=0)
    with pytest.raises(ValueError, match="features"):
        fitted.predict(X[:, :3])
    with pytest.raises(jaxmix.NotFittedError):
        FactorMixture().covariances_  # noqa: B018
