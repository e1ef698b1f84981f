"""Mixture of Poissons against a float64 numpy reference of (MAP) EM."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats
from scipy.special import gammaln, logsumexp, xlogy

import jaxmix
from jaxmix.engine import em
from jaxmix.estimators.poisson_mixture import PoissonMixture
from jaxmix.families import Poisson, PoissonParams

# One data shape and one max_iter for every functional fit: few compilations.
K, D, N = 2, 3, 120
N_ITER = 30
TRUE_RATES = np.array([[1.0, 6.0, 12.0], [9.0, 2.0, 0.5]])
TRUE_WEIGHTS = np.array([0.4, 0.6])
ALPHA = np.array([2.0, 3.5])
RATE_PRIOR = (np.array([1.5, 2.0, 3.0]), np.array([[0.5], [1.0]]))  # (D,), (K, 1)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


def make_data(seed=0, n_samples=N):
    """Counts from the two true components; feature 2 of component 1 is often 0."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(K, size=n_samples, p=TRUE_WEIGHTS)
    return rng.poisson(TRUE_RATES[labels]).astype(np.float64)


def make_start(seed=1):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(K, 5.0)), rng.gamma(4.0, 1.5, (K, D))


# -- the reference: textbook (MAP) EM in float64 numpy --------------------------
def numpy_log_density(X, rates):
    """log p(x_n | λ_k) with 0·log 0 = 0 (scipy's xlogy)."""
    return (
        xlogy(X[:, None, :], rates[None]) - rates[None] - gammaln(X[:, None, :] + 1)
    ).sum(-1)


def numpy_log_prior(weights, rates, alpha, rate_prior):
    total = 0.0
    if alpha is not None:
        total += stats.dirichlet.logpdf(weights, np.broadcast_to(alpha, weights.shape))
    if rate_prior is not None:
        a, b = (np.broadcast_to(v, rates.shape) for v in rate_prior)
        total += stats.gamma.logpdf(rates, a, scale=1 / b).sum()
    return total


def numpy_em(X, weights, rates, n_iter, alpha=None, rate_prior=None, uniform=False):
    """Returns the final params and the objective at each iteration's E-step."""
    n_samples, n_components = X.shape[0], len(weights)
    if uniform:
        weights = np.full(n_components, 1.0 / n_components)
    trace = []
    for _ in range(n_iter):
        log_joint = numpy_log_density(X, rates) + np.log(weights)
        log_norm = logsumexp(log_joint, axis=1)
        resp = np.exp(log_joint - log_norm[:, None])
        prior = numpy_log_prior(weights, rates, None if uniform else alpha, rate_prior)
        trace.append((log_norm.sum() + prior) / n_samples)
        counts = resp.sum(0)
        sums = resp.T @ X
        if uniform:
            weights = np.full(n_components, 1.0 / n_components)
        elif alpha is None:
            weights = counts / n_samples
        else:
            alpha_k = np.broadcast_to(alpha, counts.shape)
            weights = (counts + alpha_k - 1) / (
                n_samples + alpha_k.sum() - n_components
            )
        if rate_prior is None:
            rates = sums / counts[:, None]
        else:
            a, b = rate_prior
            rates = (sums + a - 1) / (counts[:, None] + b)
    return weights, rates, np.array(trace)


def _fit(family, X, weights, rates, **kwargs):
    return jaxmix.fit(
        family,
        jnp.asarray(X),
        PoissonParams(jnp.asarray(weights), jnp.asarray(rates)),
        max_iter=N_ITER,
        **{"tol": 0.0, **kwargs},
    )


CASES = {
    "ml": dict(),
    "map": dict(alpha=ALPHA, rate_prior=RATE_PRIOR),
}


def _family(case):
    options = CASES[case]
    return Poisson(
        weight_concentration=options.get("alpha"),
        rate_prior=options.get("rate_prior"),
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_matches_numpy_em(case):
    X = make_data()
    weights, rates = make_start()
    ref_weights, ref_rates, ref_trace = numpy_em(
        X, weights, rates, N_ITER, **CASES[case]
    )
    result = _fit(_family(case), X, weights, rates)
    assert int(result.status) == jaxmix.MAX_ITER
    assert result.params.rates.dtype == jnp.float64
    np.testing.assert_allclose(result.params.weights, ref_weights, rtol=1e-9)
    np.testing.assert_allclose(result.params.rates, ref_rates, rtol=1e-9)
    np.testing.assert_allclose(result.trace, ref_trace, rtol=1e-10)


def test_map_objective_never_decreases():
    family = _family("map")
    for seed in range(4):
        X = make_data(seed=10 + seed)
        rng = np.random.default_rng(seed)
        # Rough starts: one component far from the data, one near.
        rates = rng.gamma(1.0, 5.0, (K, D))
        result = _fit(family, X, rng.dirichlet(np.ones(K)), rates)
        report = jaxmix.check.check_monotone(result)
        assert report.ok, str(report)
        assert report.n_iter == N_ITER
    # A trace that does decrease is caught (the check can fail).
    trace = np.asarray(result.trace).copy()
    trace[5] = trace[4] - 1e-6
    assert not jaxmix.check.check_monotone(trace).ok


def test_prior_strength_does_not_recompile():
    X = make_data()
    weights, rates = make_start()
    _fit(_family("map"), X, weights, rates)
    before = em._fit_jit._cache_size()
    first = _fit(
        Poisson(weight_concentration=ALPHA, rate_prior=RATE_PRIOR), X, weights, rates
    )
    stronger = (RATE_PRIOR[0] * 10, RATE_PRIOR[1] * 3)
    second = _fit(
        Poisson(weight_concentration=ALPHA * 2, rate_prior=stronger), X, weights, rates
    )
    assert em._fit_jit._cache_size() == before
    assert not np.allclose(first.params.rates, second.params.rates)


def test_log_density_with_zero_rates():
    rates = np.array([[0.0, 2.0, 0.5], [3.0, 0.0, 1e-300], [1.0, 1.0, 1.0]])
    X = np.array([[0, 1, 2], [1, 0, 0], [0, 0, 0], [3, 4, 0], [0, 2, 7]], float)
    family = Poisson()
    params = PoissonParams(jnp.full(3, 1 / 3), jnp.asarray(rates))
    ours = np.asarray(family.log_component_density(params, jnp.asarray(X)))
    expected = stats.poisson.logpmf(X[:, None, :], rates[None]).sum(-1)
    assert not np.isnan(ours).any()
    assert np.isneginf(expected).any() and np.isfinite(expected).any()
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=1e-12)

    # The gradient with respect to the rates, summed over the possible
    # entries, is finite and matches ∂/∂λ = Σ_n (x_nd / λ_kd − 1) (zero rates:
    # only the −λ term, since every such x_nd is 0).
    def total(r):
        log_density = family.log_component_density(params._replace(rates=r), X)
        return jnp.sum(jnp.where(finite, log_density, 0.0))

    gradient = np.asarray(jax.grad(total)(jnp.asarray(rates)))
    assert np.all(np.isfinite(gradient))
    ratio = np.divide(
        X[:, None, :], rates[None], where=rates[None] > 0, out=np.zeros((5, 3, 3))
    )
    expected_gradient = np.sum(np.where(finite[..., None], ratio - 1, 0.0), axis=0)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-12)


def test_log_prior_matches_scipy():
    rng = np.random.default_rng(5)
    weights, rates = rng.dirichlet(np.ones(K)), rng.gamma(2.0, 2.0, (K, D))
    family = _family("map")
    ours = family.log_prior(PoissonParams(jnp.asarray(weights), jnp.asarray(rates)))
    assert float(ours) == pytest.approx(
        numpy_log_prior(weights, rates, ALPHA, RATE_PRIOR), rel=1e-12
    )
    # a = 1 (an exponential prior) at a zero rate: finite, no NaN.
    flat = Poisson(rate_prior=(1.0, 2.0))
    zero = PoissonParams(jnp.asarray(weights), jnp.zeros((K, D)))
    assert float(flat.log_prior(zero)) == pytest.approx(K * D * np.log(2.0))
    assert float(Poisson().log_prior(PoissonParams(weights, rates))) == 0.0


def test_n_parameters():
    assert Poisson().n_parameters(K, D) == K * D + K - 1
    assert Poisson(uniform_weights=True).n_parameters(K, D) == K * D


def test_empty_component_gives_no_nan():
    X = make_data()
    resp = np.zeros((N, K))
    resp[:, 0] = 1.0  # component 1 is empty
    for case in CASES:
        params = jaxmix.m_step(_family(case), jnp.asarray(X), jnp.asarray(resp))
        assert np.all(np.isfinite(params.rates)) and np.all(np.isfinite(params.weights))
        np.testing.assert_allclose(params.weights.sum(), 1.0)


# -- the autodiff checks -----------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_own_m_step_passes_check(case):
    family = _family(case)
    if family.rate_prior is not None:
        # Both Gamma parameters at full shape (K, D).
        prior = tuple(np.broadcast_to(v, (K, D)) for v in family.rate_prior)
        family = Poisson(weight_concentration=ALPHA, rate_prior=prior)
    report = jaxmix.check.check_m_step(family, make_data(), n_components=K)
    assert report.ok, str(report)


def test_wrong_m_step_fails_naming_rates():
    def m_step(X, resp):
        counts = resp.sum(0)
        return {"weights": counts / len(X), "rates": resp.T @ X / len(X)}

    def right(X, resp):
        counts = resp.sum(0)
        return {"weights": counts / len(X), "rates": resp.T @ X / counts[:, None]}

    X = make_data()
    family = Poisson()
    assert jaxmix.check.check_m_step(family, X, right, n_components=K).ok
    report = jaxmix.check.check_m_step(family, X, m_step, n_components=K)
    assert not report.ok
    assert report.failed == ("rates",)
    assert "rates" in str(report)


def test_fisher_identity():
    X = make_data()
    weights, rates = make_start()
    params = PoissonParams(weights, rates)
    assert jaxmix.check.check_fisher_identity(Poisson(), params, X).ok
    # A wrong E-step (responsibilities of the prior weights alone) breaks it.
    wrong = jaxmix.check.check_fisher_identity(
        Poisson(), params, X, lambda p, x: np.tile(p.weights, (len(x), 1))
    )
    assert not wrong.ok


# -- the drivers -------------------------------------------------------------------
def test_fit_restarts_matches_numpy_em_from_each_start():
    X = make_data(seed=2)
    family = Poisson()
    key = jax.random.key(3)
    result = jaxmix.fit_restarts(
        family, jnp.asarray(X), key, K, n_init=2, max_iter=N_ITER, tol=0.0
    )
    keys = jax.random.split(key, 2)
    finals = []
    for r in range(2):
        start = jaxmix.initialize(family, keys[r], jnp.asarray(X), K)
        ref = numpy_em(X, np.asarray(start.weights), np.asarray(start.rates), N_ITER)
        np.testing.assert_allclose(result.all.params.rates[r], ref[1], rtol=1e-9)
        np.testing.assert_allclose(result.all.trace[r], ref[2], rtol=1e-10)
        finals.append(ref[2][-1])
    assert int(result.best_index) == int(np.argmax(finals))


def test_fit_many_matches_numpy_em_per_data_set():
    Xs = np.stack([make_data(seed=s) for s in (4, 5)])
    starts = [make_start(seed=s) for s in (6, 7)]
    params = PoissonParams(
        jnp.asarray(np.stack([s[0] for s in starts])),
        jnp.asarray(np.stack([s[1] for s in starts])),
    )
    result = jaxmix.fit_many(
        Poisson(),
        jnp.asarray(Xs),
        jax.random.key(0),
        K,
        params=params,
        max_iter=N_ITER,
        tol=0.0,
    )
    for b in range(2):
        ref = numpy_em(Xs[b], *starts[b], N_ITER)
        np.testing.assert_allclose(result.params.weights[b], ref[0], rtol=1e-9)
        np.testing.assert_allclose(result.params.rates[b], ref[1], rtol=1e-9)
        assert float(result.log_likelihood[b]) == pytest.approx(ref[2][-1], rel=1e-10)


def test_select_n_components_picks_two():
    X = make_data(seed=8)
    sweep = jaxmix.select_n_components(
        Poisson(), jnp.asarray(X), jax.random.key(1), K, max_iter=N_ITER
    )
    assert sweep.best_n_components == K
    # K·D + K − 1 free parameters for K = 1, 2.
    np.testing.assert_array_equal(sweep.n_parameters[0], [D, 2 * D + 1])
    # One component: the ML rate is the sample mean.
    one = sweep.model(n_components=1).params
    np.testing.assert_allclose(one.rates[0], X.mean(0), rtol=1e-12)
    for k in (1, 2):
        params = sweep.model(n_components=k).params
        log_norm = logsumexp(
            numpy_log_density(X, np.asarray(params.rates)) + np.log(params.weights),
            axis=1,
        )
        assert sweep.log_likelihood[0, k - 1] == pytest.approx(
            log_norm.sum(), rel=1e-10
        )
        assert sweep.bic[0, k - 1] == pytest.approx(
            -2 * log_norm.sum() + Poisson().n_parameters(k, D) * np.log(N), rel=1e-10
        )


def test_gradient_fit_reaches_em_optimum():
    X = make_data()
    weights, rates = make_start()
    *_, em_trace = numpy_em(X, weights, rates, 500)
    optimum = em_trace[-1]
    assert abs(em_trace[-1] - em_trace[-2]) < 1e-12  # EM has converged
    params, trace = jaxmix.fit_gradient(
        Poisson(),
        jnp.asarray(X),
        PoissonParams(weights, rates),
        optimizer=optax.lbfgs(),
        steps=100,
    )
    final = logsumexp(
        numpy_log_density(X, np.asarray(params.rates)) + np.log(params.weights), axis=1
    ).mean()
    assert final == pytest.approx(optimum, abs=1e-6)
    assert final <= optimum + 1e-9
    assert np.all(np.asarray(params.rates) > 0)


# -- bad input ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, message",
    [(-1.0, "negative"), (0.5, "non-integer"), (2.25, "non-integer")],
)
def test_check_data_rejects_non_counts(bad, message):
    X = make_data()
    Poisson().check_data(X)  # counts pass
    X[3, 1] = bad
    with pytest.raises(ValueError, match=message):
        Poisson().check_data(X)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rate_prior=2.0), "pair"),
        (dict(rate_prior=(1.0, 2.0, 3.0)), "pair"),
        (dict(rate_prior=(0.5, 1.0)), "shape a"),
        (dict(rate_prior=(2.0, 0.0)), "rate b"),
        (dict(rate_prior=(2.0, np.array([1.0, np.nan]))), "rate b"),
        (dict(weight_concentration=0.5), "weight_concentration"),
    ],
)
def test_family_rejects_bad_priors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Poisson(**kwargs)


# -- the estimator -----------------------------------------------------------------
def test_estimator_matches_numpy_em():
    X = make_data(seed=9)
    weights, rates = make_start()
    ref_weights, ref_rates, ref_trace = numpy_em(X, weights, rates, N_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged after N_ITER: expected
        model = PoissonMixture(
            K, tol=0.0, max_iter=N_ITER, weights_init=weights, rates_init=rates
        ).fit(X)
    assert model.rates_.dtype == np.float64
    assert model.n_iter_ == N_ITER
    np.testing.assert_allclose(model.weights_, ref_weights, rtol=1e-9)
    np.testing.assert_allclose(model.rates_, ref_rates, rtol=1e-9)
    np.testing.assert_allclose(model.lower_bounds_, ref_trace, rtol=1e-10)


@pytest.fixture(scope="module")
def fitted():
    X = make_data(seed=11)
    return X, PoissonMixture(K, n_init=2, random_state=0).fit(X)


def test_estimator_recovers_the_rates(fitted):
    X, model = fitted
    assert model.converged_
    order = np.argsort(model.rates_[:, 0])  # the true component 0 has the small rate
    rates, weights = model.rates_[order], model.weights_[order]
    # Four standard errors of a Poisson mean over the component's samples.
    se = np.sqrt(TRUE_RATES / (N * TRUE_WEIGHTS[:, None]))
    assert np.all(np.abs(rates - TRUE_RATES) <= 4 * se)
    np.testing.assert_allclose(weights, TRUE_WEIGHTS, atol=0.1)
    # An identity of the ML M-step: Σ_k π_k λ_k is the sample mean.
    np.testing.assert_allclose(model.mean(), X.mean(axis=0), rtol=1e-9)


def test_scoring_methods_match_numpy(fitted):
    X, model = fitted
    log_joint = numpy_log_density(X, model.rates_) + np.log(model.weights_)
    log_norm = logsumexp(log_joint, axis=1)
    np.testing.assert_allclose(model.score_samples(X), log_norm, rtol=1e-10)
    assert model.score(X) == pytest.approx(log_norm.mean(), rel=1e-10)
    np.testing.assert_allclose(
        model.predict_proba(X), np.exp(log_joint - log_norm[:, None]), atol=1e-10
    )
    np.testing.assert_array_equal(model.predict(X), log_joint.argmax(1))
    n_params = K * D + K - 1
    assert model.bic(X) == pytest.approx(-2 * log_norm.sum() + n_params * np.log(N))
    assert model.aic(X) == pytest.approx(-2 * log_norm.sum() + 2 * n_params)
    assert model.lower_bound_ == pytest.approx(model.score(X), abs=1e-3)


def test_sample_follows_the_model(fitted):
    _, model = fitted
    samples, labels = model.sample(20_000)
    assert samples.shape == (20_000, D) and samples.dtype == np.float64
    assert np.all(samples >= 0) and np.all(samples == np.round(samples))
    for k in range(K):
        chosen = samples[labels == k]
        se = np.sqrt(model.rates_[k] / len(chosen)) + 1e-12
        assert np.all(np.abs(chosen.mean(0) - model.rates_[k]) <= 5 * se)
    freq = np.bincount(labels, minlength=K) / len(labels)
    np.testing.assert_allclose(freq, model.weights_, atol=0.02)


def test_estimator_fit_many():
    Xs = [make_data(seed=s) for s in (12, 13)]
    many = PoissonMixture(K, random_state=0).fit_many(Xs)
    assert many.rates_.shape == (2, K, D)
    for b, X in enumerate(Xs):
        np.testing.assert_allclose(many[b].mean(), X.mean(axis=0), rtol=1e-9)
        assert many[b].score(X) == pytest.approx(many.lower_bound_[b], abs=1e-3)


def test_rate_prior_keeps_held_out_likelihood_finite():
    # A feature no training sample counts gets an ML rate of exactly 0: held-out
    # samples with a count there are impossible under ML (−inf, not NaN).
    train, test = make_data(seed=14), make_data(seed=15)
    train[:, 2] = 0.0
    # n_init as in ``fitted``: the same compiled program.
    ml = PoissonMixture(K, n_init=2, random_state=0).fit(train)
    bayes = PoissonMixture(
        K,
        n_init=2,
        random_state=0,
        rate_prior=(2.0, 1.0),
        weight_concentration_prior=2.0,
    ).fit(train)
    np.testing.assert_array_equal(ml.rates_[:, 2], 0.0)
    scores = ml.score_samples(test)
    assert not np.isnan(scores).any()
    np.testing.assert_array_equal(np.isneginf(scores), test[:, 2] > 0)
    assert np.all(np.isfinite(bayes.score_samples(test)))
    assert np.all(bayes.rates_ > 0)
    with pytest.raises(ValueError, match="probability zero under every component"):
        ml.predict(test)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weight_concentration_prior=0.5), "weight_concentration_prior"),
        (dict(weight_concentration_prior=[1.0, 2.0, 3.0]), "weight_concentration"),
        (dict(rate_prior=2.0), "pair"),
        (dict(rate_prior=(1.0, 2.0, 3.0)), "pair"),
        (dict(rate_prior=(0.5, 2.0)), "rate_prior a"),
        (dict(rate_prior=(2.0, 0.0)), "rate_prior b"),
        (dict(rate_prior=(2.0, np.nan)), "rate_prior b"),
        (dict(rate_prior=(2.0, np.ones(D + 1))), "broadcastable"),
        (dict(rates_init=np.full((K, D), -1.0)), "rates_init"),
        (dict(rates_init=np.ones((K, D + 1))), "rates_init"),
        (dict(weights_init=[0.5, 0.6]), "weights_init"),
        (dict(weights_init=np.ones(K) / K, uniform_weights=True), "uniform_weights"),
        (dict(init_params="k-means++"), "init_params"),
        (dict(n_components=N + 1), "n_samples"),
    ],
)
def test_estimator_bad_parameters(kwargs, message):
    kwargs = {"n_components": K, **kwargs}
    with pytest.raises(ValueError, match=message):
        PoissonMixture(**kwargs).fit(make_data())


def test_estimator_rejects_non_counts(fitted):
    X, model = fitted
    for bad, message in ((X - 1, "negative"), (X + 0.5, "non-integer")):
        with pytest.raises(ValueError, match=message):
            PoissonMixture(K).fit(bad)
        with pytest.raises(ValueError, match=message):
            model.score_samples(bad)
    with pytest.raises(ValueError, match="NaN"):
        PoissonMixture(K).fit(np.where(X > 3, np.nan, X))


def test_not_fitted_and_params_round_trip():
    with pytest.raises(jaxmix.NotFittedError):
        PoissonMixture(K).predict(make_data())
    with pytest.raises(jaxmix.NotFittedError):
        PoissonMixture(K).mean()
    model = PoissonMixture(4, rate_prior=(2, 1), uniform_weights=True)
    params = model.get_params()
    assert params["rate_prior"] == (2, 1) and params["uniform_weights"] is True
    assert PoissonMixture().set_params(**params).get_params() == params
