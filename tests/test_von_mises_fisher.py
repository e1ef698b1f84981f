"""Mixture of von Mises–Fisher distributions against scipy's Bessel functions.

The references are independent of jaxmix's Bessel module: the normaliser
from ``scipy.special.ive``, the maximum-likelihood concentration as the root
of :math:`A_D(κ) = \\bar R` found by ``scipy.optimize.brentq``, and EM written
out in float64 NumPy with both.
"""

from __future__ import annotations

import io
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, special, stats
from scipy.special import logsumexp

import jaxmix
from jaxmix.estimators.von_mises_fisher_mixture import (
    VonMisesFisherMixture,
    sample_von_mises_fisher,
)
from jaxmix.families import VonMisesFisher, VonMisesFisherParams
from jaxmix.families.von_mises_fisher import solve_concentration
from jaxmix.io import load_model, save_model

# One data shape and one max_iter for every functional fit: few compilations.
K, D, N = 2, 3, 200
N_ITER = 20
TRUE_DIRECTIONS = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
TRUE_CONCENTRATIONS = np.array([30.0, 80.0])
TRUE_WEIGHTS = np.array([0.4, 0.6])


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


def make_data(seed=0, n_samples=N, directions=TRUE_DIRECTIONS):
    rng = np.random.RandomState(seed)
    counts = rng.multinomial(n_samples, TRUE_WEIGHTS)
    return np.concatenate(
        [
            sample_von_mises_fisher(rng, mu, kappa, count)
            for mu, kappa, count in zip(
                directions, TRUE_CONCENTRATIONS, counts, strict=True
            )
        ]
    )


def make_start(seed=1):
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(K, D))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    concentrations = np.exp(rng.uniform(np.log(0.5), np.log(50.0), K))
    return rng.dirichlet(np.full(K, 5.0)), directions, concentrations


def _params(weights, directions, concentrations):
    return VonMisesFisherParams(
        jnp.asarray(weights), jnp.asarray(directions), jnp.asarray(concentrations)
    )


# -- the references: scipy's Bessel functions, EM in float64 NumPy -------------------
def scipy_ratio(n_features, kappa):
    """A_D(κ) = I_{D/2}(κ) / I_{D/2−1}(κ).

    Where ive underflows (small κ, large D), the quotient of the series,
    κ / (2(ν + 1)) · ₀F₁(; ν + 2; κ²/4) / ₀F₁(; ν + 1; κ²/4).
    """
    nu = n_features / 2 - 1
    kappa = np.asarray(kappa, dtype=np.float64)
    below = special.ive(nu, kappa)
    if np.all(below > 1e-300):
        return special.ive(nu + 1, kappa) / below
    q = kappa**2 / 4
    series = special.hyp0f1(nu + 2, q) / special.hyp0f1(nu + 1, q)
    return kappa / (2 * (nu + 1)) * series


def scipy_log_normalizer(n_features, kappa):
    """log C_D(κ) = (D/2 − 1) log κ − (D/2) log 2π − log I_{D/2−1}(κ)."""
    nu = n_features / 2 - 1
    return (
        nu * np.log(kappa)
        - n_features / 2 * np.log(2 * np.pi)
        - (np.log(special.ive(nu, kappa)) + kappa)
    )


def scipy_concentration(n_features, mean_resultant):
    """The root of A_D(κ) = R̄, by brentq inside Amos's bracket (widened)."""
    r = mean_resultant
    low = 0.5 * (n_features - 1) * r / (1 - r**2)
    high = 2.0 * n_features * r / (1 - r**2)
    return optimize.brentq(
        lambda k: scipy_ratio(n_features, k) - r, low, high, xtol=1e-300, rtol=1e-15
    )


def numpy_log_density(X, directions, concentrations):
    log_normalizer = scipy_log_normalizer(X.shape[1], concentrations)
    return log_normalizer[None] + concentrations[None] * (X @ directions.T)


def numpy_em(X, weights, directions, concentrations, n_iter):
    """Returns the final params and the mean log-likelihood at each E-step."""
    n_samples, n_features = X.shape
    trace = []
    for _ in range(n_iter):
        log_joint = numpy_log_density(X, directions, concentrations) + np.log(weights)
        log_norm = logsumexp(log_joint, axis=1)
        trace.append(log_norm.mean())
        resp = np.exp(log_joint - log_norm[:, None])
        counts, resultants = resp.sum(0), resp.T @ X
        lengths = np.linalg.norm(resultants, axis=1)
        weights = counts / n_samples
        directions = resultants / lengths[:, None]
        concentrations = np.array(
            [scipy_concentration(n_features, r) for r in lengths / counts]
        )
    return weights, directions, concentrations, np.array(trace)


@jax.jit
def log_density(params, X):
    return VonMisesFisher().log_component_density(params, X)


def _fit(X, start, **kwargs):
    return jaxmix.fit(
        VonMisesFisher(),
        jnp.asarray(X),
        _params(*start),
        max_iter=N_ITER,
        **{"tol": 0.0, **kwargs},
    )


# -- the M-step ----------------------------------------------------------------------
@pytest.mark.parametrize("n_features, kappa", [(2, 4.0), (3, 15.0), (10, 40.0)])
def test_one_component_is_the_maximum_likelihood_estimate(n_features, kappa):
    rng = np.random.RandomState(n_features)
    mu = rng.normal(size=n_features)
    mu /= np.linalg.norm(mu)
    X = sample_von_mises_fisher(rng, mu, kappa, N)
    params = jaxmix.m_step(VonMisesFisher(), jnp.asarray(X), jnp.ones((N, 1)))
    mean = X.mean(axis=0)
    length = np.linalg.norm(mean)
    np.testing.assert_allclose(params.directions[0], mean / length, rtol=1e-13)
    expected = scipy_concentration(n_features, length)
    assert float(params.concentrations[0]) == pytest.approx(expected, rel=1e-10)
    assert float(params.weights[0]) == 1.0


def test_concentration_solver_over_its_range():
    """Against brentq for D up to 1000 and R̄ from 1e-6 to 1 − 1e-6."""
    lengths = np.concatenate(
        [np.logspace(-6, -1, 8), np.linspace(0.15, 0.95, 9), 1 - np.logspace(-2, -6, 5)]
    )
    for n_features in (2, 3, 10, 1000):
        ours = np.asarray(solve_concentration(jnp.asarray(lengths), n_features))
        expected = [scipy_concentration(n_features, r) for r in lengths]
        # 1e-9: at R̄ = 1 − 1e-6 the root moves by 2κ/(D−1) per unit of A_D,
        # which turns round-off in A_D into ~1e-10 of κ.
        np.testing.assert_allclose(ours, expected, rtol=1e-9, err_msg=n_features)
    # No resultant at all, and all samples identical: finite, positive κ.
    extremes = np.asarray(solve_concentration(jnp.asarray([0.0, 1.0, 1.0 + 1e-12]), 3))
    assert np.all(np.isfinite(extremes)) and np.all(extremes > 0)
    assert extremes[0] < 1e-14 and extremes[1] > 1e14


@pytest.mark.parametrize(
    "dtype, kappa, weight, rtol",
    # rtol: an ulp of R̄ moves κ by ε / (κ A_D'(κ)) ≈ εκ relative (D = 3,
    # large κ): 7e-12 in float64 (κ = 3.3e4), 2e-5 in float32 (κ = 330);
    # measured 1.3e-11 and 2.6e-5.
    [(np.float64, 1e4, 1e-6, 1e-10), (np.float32, 100.0, 1e-3, 3e-4)],
)
def test_component_with_almost_no_weight_gets_the_maximiser(dtype, kappa, weight, rtol):
    """Five tight samples held by component 1 with responsibility ``weight``.

    The guarded count N_k + 10ε lowered R̄ by 10ε / N_k: κ came out 1.5e-5
    too small in float64, 7% in float32.
    """
    rng = np.random.RandomState(0)
    X = make_data()
    X[:5] = sample_von_mises_fisher(rng, np.array([0.6, 0.0, 0.8]), kappa, 5)
    resp = np.zeros((N, K))
    resp[:, 0] = 1.0
    resp[:5] = [1 - weight, weight]
    X, resp = X.astype(dtype), resp.astype(dtype)
    params = jaxmix.m_step(VonMisesFisher(), jnp.asarray(X), jnp.asarray(resp))
    assert params.concentrations.dtype == dtype
    resultant = resp[:, 1].astype(np.float64) @ X.astype(np.float64)
    mean_resultant = np.linalg.norm(resultant) / resp[:, 1].astype(np.float64).sum()
    expected = scipy_concentration(D, mean_resultant)
    assert float(params.concentrations[1]) == pytest.approx(expected, rel=rtol)


def test_empty_component_gives_no_nan():
    X = make_data()
    resp = np.zeros((N, K))
    resp[:, 0] = 1.0  # component 1 is empty: no resultant
    start = _params(*make_start())
    params = jaxmix.m_step(
        VonMisesFisher(), jnp.asarray(X), jnp.asarray(resp), params=start
    )
    assert all(np.all(np.isfinite(leaf)) for leaf in params)
    np.testing.assert_allclose(params.directions[1], start.directions[1])
    assert 0 < float(params.concentrations[1]) < 1e-12  # nearly uniform
    np.testing.assert_allclose(float(params.weights.sum()), 1.0)


# -- the density ---------------------------------------------------------------------
def test_log_density_integrates_to_one_on_the_circle():
    """D = 2: the trapezoid rule on a periodic function is exact to round-off."""
    theta = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
    X = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    angles = np.array([0.3, 2.0, -1.0, 4.0])
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    concentrations = np.array([1e-4, 1.0, 30.0, 500.0])
    params = _params(np.full(4, 0.25), directions, concentrations)
    density = np.exp(log_density(params, jnp.asarray(X)))
    np.testing.assert_allclose(density.mean(axis=0) * 2 * np.pi, 1.0, rtol=1e-12)


def test_log_density_on_the_sphere_in_closed_form():
    r"""D = 3: log p(x) = log κ − log 4π − log sinh κ + κ μᵀx."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 3))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    concentrations = np.array([1e-6, 0.1, 2.0, 50.0, 1e4])
    directions = rng.normal(size=(5, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    params = _params(np.full(5, 0.2), directions, concentrations)
    ours = np.asarray(log_density(params, jnp.asarray(X)))
    # log sinh κ = κ − log 2 + log(1 − e^{−2κ}), exact at every κ here.
    log_sinh = concentrations - np.log(2) + np.log(-np.expm1(-2 * concentrations))
    log_normalizer = np.log(concentrations) - np.log(4 * np.pi) - log_sinh
    # Measured against the mode, κ(μᵀx − 1), as the family writes it.
    expected = (log_normalizer + concentrations)[None] + concentrations[None] * (
        X @ directions.T - 1
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kappa", [5.0, 50.0])
def test_log_density_integrates_to_one_in_ten_dimensions(kappa):
    r"""D = 10, by quadrature over t = μᵀx with the area of the sphere S^{D−2}.

    :math:`∫_{S^{D-1}} p = |S^{D-2}| ∫_{-1}^{1} C_D(κ) e^{κt} (1 − t^2)^{(D-3)/2} dt`.
    """
    dim = 10
    mu = np.eye(dim)[:1]
    params = _params(np.ones(1), mu, np.array([kappa]))
    # At x = μ the log density is log C_D(κ) + κ.
    log_peak = float(log_density(params, jnp.asarray(mu))[0, 0])
    area = 2 * np.pi ** ((dim - 1) / 2) / special.gamma((dim - 1) / 2)

    def integrand(t):
        return np.exp(log_peak + kappa * (t - 1)) * (1 - t**2) ** ((dim - 3) / 2)

    total, _ = integrate.quad(integrand, -1, 1, epsabs=0, epsrel=1e-13, limit=200)
    assert area * total == pytest.approx(1.0, rel=1e-11)


def test_log_density_gradient_in_the_concentration():
    r"""∂/∂κ log p(x) = μᵀx − A_D(κ): the Bessel function's custom derivative."""
    X = make_data()
    params = _params(TRUE_WEIGHTS, TRUE_DIRECTIONS, TRUE_CONCENTRATIONS)

    @jax.jit
    def total(kappa):
        p = params._replace(concentrations=kappa)
        return jnp.sum(log_density(p, jnp.asarray(X)), 0)

    jacobian = np.asarray(jax.jacobian(total)(params.concentrations))
    expected = (X @ TRUE_DIRECTIONS.T).sum(0) - N * scipy_ratio(D, TRUE_CONCENTRATIONS)
    np.testing.assert_allclose(np.diag(jacobian), expected, rtol=1e-11)


# -- EM ------------------------------------------------------------------------------
def test_fit_matches_numpy_em():
    X = make_data()
    start = make_start()
    ref_weights, ref_directions, ref_concentrations, ref_trace = numpy_em(
        X, *start, N_ITER
    )
    result = _fit(X, start)
    assert int(result.status) == jaxmix.MAX_ITER
    np.testing.assert_allclose(result.params.weights, ref_weights, rtol=1e-9)
    np.testing.assert_allclose(result.params.directions, ref_directions, atol=1e-10)
    np.testing.assert_allclose(
        result.params.concentrations, ref_concentrations, rtol=1e-9
    )
    np.testing.assert_allclose(result.trace, ref_trace, rtol=1e-10)


def rounding_allowance(start, result):
    r"""``rtol`` for :func:`jaxmix.check.check_monotone`: 100ε plus κ's share.

    A log density :math:`κ_k (μ_kᵀx − 1) + …` carries the rounding of
    :math:`μ_kᵀx` (an ε from the dot product, another from ‖μ_k‖ = 1 to an
    ulp) times κ_k, so the mean log-likelihood carries about
    :math:`ε Σ_k π_k κ_k`: at κ_k = 1e6 and π_k = 0.01 that is 2e-12, a
    hundred times the default 100ε. Measured over 3,000 fits from
    :func:`make_data` and :func:`make_start`: no decrease exceeded the
    default allowance by more than 1.5 ε Σ_k π_k κ_k, the sum taken at the
    start or the end of the fit (it grows while a component tightens, to
    the end). Four times that, here.
    """
    weights, _, concentrations = start
    scale = max(
        np.sum(weights * concentrations),
        float(jnp.sum(result.params.weights * result.params.concentrations)),
    )
    return np.finfo(np.float64).eps * (100 + 4 * scale)


@settings(max_examples=8)  # derandomised and without deadline by the profile
@given(data_seed=st.integers(0, 10_000), start_seed=st.integers(0, 10_000))
def test_objective_never_decreases(data_seed, start_seed):
    start = make_start(start_seed)
    result = _fit(make_data(data_seed), start)
    report = jaxmix.check.check_monotone(result, rtol=rounding_allowance(start, result))
    assert report.ok, str(report)


def test_objective_never_decreases_when_a_component_holds_one_sample():
    """A draw of the test above that failed: component 1 ends on one sample.

    Its R̄ is then 1 to round-off, and Q increases with κ up to the clip of
    :func:`solve_concentration`: the maximiser is the clip's κ in every
    iteration. The M-step used to divide by the guarded count N_k + 10ε,
    which put 1 − R̄ at 9ε or 10ε by the last bit of ‖r_k‖: κ alternated
    between 4.7e14 and 4.5e14, and every fall lowered the objective by
    2.8e-4. Now the collapsed state is a fixed point of the M-step (the
    same κ, and μ = x / ‖x‖ to the bit), so the trace passes the check
    without κ's share of the allowance, which at κ = 1.1e15 is 1e-3.
    """
    result = _fit(make_data(4120), make_start(9011))
    assert float(result.params.weights[1]) == pytest.approx(1 / N, rel=1e-12)
    clip = float(solve_concentration(jnp.asarray(1.0), D))
    assert float(result.params.concentrations[1]) == clip
    report = jaxmix.check.check_monotone(result)
    assert report.ok, str(report)


def test_vmapped_fits_equal_one_by_one():
    Xs = np.stack([make_data(seed) for seed in (4, 5, 6)])
    starts = [make_start(seed) for seed in (7, 8, 9)]
    stacked = _params(*(np.stack(field) for field in zip(*starts, strict=True)))
    many = jaxmix.fit_many(
        VonMisesFisher(),
        jnp.asarray(Xs),
        jax.random.key(0),
        K,
        params=stacked,
        max_iter=N_ITER,
        tol=0.0,
    )
    for b in range(3):
        one = _fit(Xs[b], starts[b])
        for name in VonMisesFisherParams._fields:
            np.testing.assert_allclose(
                getattr(many.params, name)[b],
                getattr(one.params, name),
                rtol=1e-10,
                atol=1e-12,
                err_msg=name,
            )
        assert float(many.log_likelihood[b]) == pytest.approx(
            float(one.log_likelihood), rel=1e-12
        )


# -- the autodiff checker ------------------------------------------------------------
def numpy_m_step(X, resp, exact=True):
    counts, resultants = resp.sum(0), resp.T @ X
    lengths = np.linalg.norm(resultants, axis=1)
    r = lengths / counts
    if exact:
        kappa = np.array([scipy_concentration(X.shape[1], v) for v in r])
    else:  # Banerjee et al.'s approximation alone, without Newton steps
        kappa = r * (X.shape[1] - r**2) / (1 - r**2)
    return {
        "weights": counts / len(X),
        "directions": resultants / lengths[:, None],
        "concentrations": kappa,
    }


def test_checker_tells_the_approximation_from_the_maximiser():
    X = make_data()
    family = VonMisesFisher()
    # No L-BFGS run (the cheaper program): the gradient and the perturbations
    # tell them apart.
    options = dict(n_components=K, maximize_steps=0)
    assert jaxmix.check.check_m_step(family, X, numpy_m_step, **options).ok
    report = jaxmix.check.check_m_step(
        family, X, lambda x, r: numpy_m_step(x, r, exact=False), **options
    )
    assert not report.ok
    assert report.failed == ("concentrations",)
    assert "concentrations" in str(report)


# -- bad input -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda X: X * 1.01, "unit vectors"),
        (lambda X: np.where(np.arange(N)[:, None] == 3, 0.0, X), "row 3"),
        (lambda X: np.where(X > 0.99, np.nan, X), "NaN"),
        (lambda X: np.where(X > 0.99, np.inf, X), "infinite"),
        (lambda X: X[:, :1], "n_features = 1"),
    ],
)
def test_check_data_rejects_what_is_not_on_the_sphere(change, message):
    X = make_data()
    VonMisesFisher().check_data(X)  # unit vectors pass
    VonMisesFisher().check_data(X * (1 + 5e-7))  # within the tolerance
    with pytest.raises(ValueError, match=message):
        VonMisesFisher().check_data(change(X))


# -- the estimator -------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    X = make_data(seed=11)
    return X, VonMisesFisherMixture(K, n_init=2, random_state=0).fit(X)


def _matched(model):
    """The fitted components in the order of the true ones (by direction)."""
    return np.argmax(model.directions_ @ TRUE_DIRECTIONS.T, axis=0)


def test_estimator_recovers_the_components(fitted):
    X, model = fitted
    assert model.converged_
    order = _matched(model)
    assert sorted(order) == [0, 1]
    counts = N * TRUE_WEIGHTS
    # Angular error ≈ √((D−1) / (κ N_k)) radians; κ̂'s relative error
    # ≈ √(2 / ((D−1) N_k)). Four of each.
    cosines = np.sum(model.directions_[order] * TRUE_DIRECTIONS, axis=1)
    angles = np.arccos(np.clip(cosines, -1, 1))
    assert np.all(angles < 4 * np.sqrt((D - 1) / (TRUE_CONCENTRATIONS * counts)))
    relative = model.concentrations_[order] / TRUE_CONCENTRATIONS - 1
    assert np.all(np.abs(relative) < 4 * np.sqrt(2 / ((D - 1) * counts)))
    np.testing.assert_allclose(model.weights_[order], TRUE_WEIGHTS, atol=0.1)
    np.testing.assert_allclose(np.linalg.norm(model.directions_, axis=1), 1.0)


def test_scoring_methods_match_scipy(fitted):
    X, model = fitted
    log_density = numpy_log_density(X, model.directions_, model.concentrations_)
    log_joint = log_density + np.log(model.weights_)
    log_norm = logsumexp(log_joint, axis=1)
    np.testing.assert_allclose(model.score_samples(X), log_norm, rtol=1e-11)
    assert model.score(X) == pytest.approx(log_norm.mean(), rel=1e-11)
    np.testing.assert_allclose(
        model.predict_proba(X), np.exp(log_joint - log_norm[:, None]), atol=1e-11
    )
    np.testing.assert_array_equal(model.predict(X), log_joint.argmax(1))
    n_params = (K - 1) + K * (D - 1) + K
    assert VonMisesFisher().n_parameters(K, D) == n_params
    assert model.bic(X) == pytest.approx(-2 * log_norm.sum() + n_params * np.log(N))
    assert model.aic(X) == pytest.approx(-2 * log_norm.sum() + 2 * n_params)
    assert model.lower_bound_ == pytest.approx(model.score(X), abs=1e-3)
    expected_mean = (
        model.weights_ * scipy_ratio(D, model.concentrations_)
    ) @ model.directions_
    np.testing.assert_allclose(model.mean(), expected_mean, rtol=1e-12)
    # After any M-step, Σ_k π_k A_D(κ_k) μ_k = Σ_k r_k / N is the data's mean:
    # a check that the concentration equation is solved exactly.
    np.testing.assert_allclose(model.mean(), X.mean(axis=0), rtol=1e-10)


def test_float32_fit_follows_float64(fitted):
    """Same data and seed in float32: the same fit to float32 accuracy.

    Tolerance: ~1e-5 of the Bessel ratio in float32 moves κ̂ by 2κ/(D − 1)
    times that, a few 1e-4 here.
    """
    X, model = fitted
    single = VonMisesFisherMixture(K, n_init=2, random_state=0).fit(
        X.astype(np.float32)
    )
    assert single.directions_.dtype == np.float32
    np.testing.assert_allclose(single.directions_, model.directions_, atol=1e-5)
    np.testing.assert_allclose(single.concentrations_, model.concentrations_, rtol=1e-3)
    np.testing.assert_allclose(single.weights_, model.weights_, atol=1e-5)


def test_sampler_follows_the_distribution():
    """Wood's sampler: μᵀx against its exact law (D = 3) and A_D(κ) (D = 10)."""
    rng = np.random.RandomState(0)
    mu = np.array([0.6, 0.0, 0.8])
    for kappa in (0.5, 5.0, 200.0):
        w = sample_von_mises_fisher(rng, mu, kappa, 4000) @ mu
        # D = 3: μᵀx has density κ e^{κw} / (2 sinh κ) on [−1, 1].
        cdf = lambda t, k=kappa: np.expm1(k * (t + 1)) / np.expm1(2 * k)  # noqa: E731
        assert stats.kstest(w, cdf).pvalue > 1e-3, kappa
    mu10 = np.eye(10)[0]
    samples = sample_von_mises_fisher(rng, mu10, 20.0, 20_000)
    np.testing.assert_allclose(np.linalg.norm(samples, axis=1), 1.0, rtol=1e-12)
    w = samples @ mu10
    assert abs(w.mean() - scipy_ratio(10, 20.0)) < 5 * w.std() / np.sqrt(w.size)
    tangent = samples[:, 1:]  # the tangent part is isotropic
    assert np.all(np.abs(tangent.mean(axis=0)) < 5 * tangent.std() / np.sqrt(w.size))


def test_estimator_sample(fitted):
    _, model = fitted
    samples, labels = model.sample(2000)
    assert samples.shape == (2000, D) and samples.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(samples, axis=1), 1.0, rtol=1e-12)
    frequencies = np.bincount(labels, minlength=K) / labels.size
    np.testing.assert_allclose(frequencies, model.weights_, atol=0.05)


def test_normalize_option(fitted):
    X, model = fitted
    lengths = np.random.default_rng(0).uniform(0.5, 3.0, (N, 1))
    Y = X * lengths
    scaled = VonMisesFisherMixture(K, n_init=2, random_state=0, normalize=True)
    scaled.fit(Y)
    np.testing.assert_allclose(scaled.directions_, model.directions_, atol=1e-12)
    np.testing.assert_allclose(scaled.score_samples(Y), model.score_samples(X))
    with pytest.raises(ValueError, match="unit vectors.*normalize=True"):
        model.score_samples(Y)
    zero = Y.copy()
    zero[5] = 0.0
    with pytest.raises(ValueError, match="row 5 of X is zero"):
        scaled.predict(zero)


@pytest.mark.parametrize(
    "kwargs, data, message",
    [
        ({}, lambda X: X * 1.1, "unit vectors"),
        ({}, lambda X: np.where(X > 0.99, np.nan, X), "NaN"),
        ({"normalize": True}, lambda X: X[:, :1], "n_features = 1"),
        ({"directions_init": np.ones((K, D + 1))}, None, "directions_init"),
        ({"directions_init": np.zeros((K, D))}, None, "no direction"),
        ({"concentrations_init": [1.0, -2.0]}, None, "concentrations_init"),
        ({"weight_concentration_prior": 0.5}, None, "weight_concentration_prior"),
        ({"weights_init": [0.5, 0.5], "uniform_weights": True}, None, "uniform"),
        ({"init_params": "spherical"}, None, "init_params"),
        ({"n_components": N + 1}, None, "n_samples"),
    ],
)
def test_estimator_rejects_bad_input(kwargs, data, message):
    X = make_data()
    X = X if data is None else data(X)
    with pytest.raises(ValueError, match=message):
        VonMisesFisherMixture(**{"n_components": K, **kwargs}).fit(X)


def test_user_starts_are_used():
    """A complete start with max_iter = 1 is exactly one EM step from it."""
    X = make_data(seed=13)
    weights, directions, concentrations = make_start(seed=14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged after one iteration
        model = VonMisesFisherMixture(
            K,
            max_iter=1,
            weights_init=weights,
            directions_init=3 * directions,  # rows are normalised
            concentrations_init=concentrations,
        ).fit(X)
    ref = numpy_em(X, weights, directions, concentrations, 1)
    np.testing.assert_allclose(model.weights_, ref[0], rtol=1e-10)
    np.testing.assert_allclose(model.directions_, ref[1], atol=1e-12)
    np.testing.assert_allclose(model.concentrations_, ref[2], rtol=1e-10)


def test_save_and_load_round_trip(fitted):
    X, model = fitted
    buffer = io.BytesIO()
    save_model(buffer, model)
    copy = load_model(io.BytesIO(buffer.getvalue()))
    assert type(copy) is VonMisesFisherMixture
    for name in ("weights_", "directions_", "concentrations_", "lower_bounds_"):
        np.testing.assert_array_equal(getattr(copy, name), getattr(model, name))
    np.testing.assert_array_equal(copy.score_samples(X), model.score_samples(X))
    assert copy.get_params() == model.get_params()


def test_not_fitted_and_params_round_trip():
    with pytest.raises(jaxmix.NotFittedError):
        VonMisesFisherMixture(K).predict(make_data())
    with pytest.raises(jaxmix.NotFittedError):
        VonMisesFisherMixture(K).mean()
    model = VonMisesFisherMixture(4, normalize=True, weight_concentration_prior=2.0)
    params = model.get_params()
    assert params["normalize"] is True and params["weight_concentration_prior"] == 2
    assert VonMisesFisherMixture().set_params(**params).get_params() == params
