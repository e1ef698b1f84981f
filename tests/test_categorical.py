"""Mixture of categoricals against a float64 NumPy reference of (MAP) EM."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats
from scipy.special import logsumexp

import jaxmix
import jaxmix.check
from jaxmix.engine import em
from jaxmix.families.categorical import CategoricalParams, LevelSimplex

# One data shape for every fit (few compilations): a survey of D questions
# with L possible answers each, answered by N people from K groups.
K, D, L, N = 2, 3, 4, 150
N_ITER = 30

TRUE_WEIGHTS = np.array([0.6, 0.4])
TRUE_PROBS = np.array(
    [
        [[0.80, 0.10, 0.05, 0.05], [0.05, 0.10, 0.05, 0.80], [0.70, 0.20, 0.05, 0.05]],
        [[0.05, 0.05, 0.10, 0.80], [0.80, 0.10, 0.05, 0.05], [0.05, 0.05, 0.20, 0.70]],
    ]
)
ALPHA = np.array([1.5, 3.0])
BETA = np.linspace(1.0, 3.0, D * L).reshape(D, L)  # broadcast over components


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


def make_data(seed=0, n_samples=N):
    """Codes 0 … L − 1 (as floats) and the group of every respondent."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(K, size=n_samples, p=TRUE_WEIGHTS)
    cumulative = np.cumsum(TRUE_PROBS[labels], axis=-1)  # (N, D, L)
    uniform = rng.random((n_samples, D, 1))
    codes = np.minimum(np.sum(uniform > cumulative, axis=-1), L - 1)
    return codes.astype(np.float64), labels


def make_start(seed=1):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(K, 5.0)), rng.dirichlet(np.full(L, 3.0), (K, D))


# -- the reference: textbook (MAP) EM in float64 NumPy, by indexing -------------
def numpy_log_density(X, probs):
    """log p(x_n | θ_k) = Σ_d log θ[k, d, x_nd], shape (N, K)."""
    codes = X.astype(int)
    with np.errstate(divide="ignore"):
        log_probs = np.log(probs)
    return sum(log_probs[:, d, codes[:, d]].T for d in range(X.shape[1]))


def numpy_level_counts(X, resp):
    counts = np.zeros((resp.shape[1], X.shape[1], L))
    for level in range(L):
        counts[:, :, level] = resp.T @ (X == level).astype(np.float64)
    return counts


def numpy_log_prior(weights, probs, alpha, beta):
    total = 0.0
    if alpha is not None:
        total += stats.dirichlet.logpdf(weights, np.broadcast_to(alpha, weights.shape))
    if beta is not None:
        beta = np.broadcast_to(beta, probs.shape)
        for k in range(probs.shape[0]):
            for d in range(probs.shape[1]):
                total += stats.dirichlet.logpdf(probs[k, d], beta[k, d])
    return total


def numpy_m_step(X, resp, alpha=None, beta=None, uniform=False):
    """θ_kdl = (c_kdl + β − 1) / (N_k + Σ_l (β − 1)); weights as in the design."""
    n_components = resp.shape[1]
    counts = resp.sum(0)
    level_counts = numpy_level_counts(X, resp)
    if uniform:
        weights = np.full(n_components, 1.0 / n_components)
    elif alpha is None:
        weights = counts / counts.sum()
    else:
        alpha_k = np.broadcast_to(alpha, counts.shape)
        weights = (counts + alpha_k - 1) / (counts.sum() + alpha_k.sum() - n_components)
    if beta is None:
        probs = level_counts / counts[:, None, None]
    else:
        beta = np.broadcast_to(beta, level_counts.shape)
        denominator = counts[:, None] + np.sum(beta - 1, axis=-1)
        probs = (level_counts + beta - 1) / denominator[..., None]
    return weights, probs


def numpy_em(X, weights, probs, n_iter, alpha=None, beta=None, uniform=False, w=None):
    """Final params and the objective at each iteration's E-step."""
    w = np.ones(X.shape[0]) if w is None else w
    if uniform:
        weights = np.full(len(weights), 1.0 / len(weights))
    trace = []
    for _ in range(n_iter):
        log_joint = numpy_log_density(X, probs) + np.log(weights)
        log_norm = logsumexp(log_joint, axis=1)
        resp = np.exp(log_joint - log_norm[:, None])
        prior = numpy_log_prior(weights, probs, None if uniform else alpha, beta)
        trace.append((w @ log_norm + prior) / w.sum())
        weights, probs = numpy_m_step(X, resp * w[:, None], alpha, beta, uniform)
    return weights, probs, np.array(trace)


def numpy_log_likelihood(X, weights, probs):
    return logsumexp(numpy_log_density(X, probs) + np.log(weights), axis=1).sum()


CASES = {
    "ml": dict(),
    "uniform": dict(uniform=True),
    "map": dict(alpha=ALPHA, beta=BETA),
}


def _family(alpha=None, beta=None, uniform=False):
    return jaxmix.families.Categorical(
        n_levels=L,
        weight_concentration=alpha,
        level_prior=beta,
        uniform_weights=uniform,
    )


# -- the family through jaxmix.fit ------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_matches_numpy_em(case):
    X, _ = make_data(seed=2)
    weights, probs = make_start()
    options = CASES[case]
    if options.get("uniform"):
        weights = np.full(K, 1.0 / K)
    ref_weights, ref_probs, ref_trace = numpy_em(X, weights, probs, N_ITER, **options)
    result = jaxmix.fit(
        _family(**options),
        jnp.asarray(X),
        CategoricalParams(jnp.asarray(weights), jnp.asarray(probs)),
        max_iter=N_ITER,
        tol=0.0,
    )
    assert int(result.status) == jaxmix.MAX_ITER
    assert result.params.probs.dtype == jnp.float64
    np.testing.assert_allclose(result.params.weights, ref_weights, rtol=1e-9)
    np.testing.assert_allclose(result.params.probs, ref_probs, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(result.trace, ref_trace, rtol=1e-10)


def test_map_objective_never_decreases():
    X, _ = make_data(seed=3)
    family = _family(alpha=ALPHA, beta=BETA)
    for seed in range(4):
        start = jaxmix.initialize(family, jax.random.key(seed), X, K, method="random")
        result = jaxmix.fit(family, jnp.asarray(X), start, max_iter=N_ITER, tol=0.0)
        report = jaxmix.check.check_monotone(result)
        assert report.ok, str(report)
        assert report.n_iter == N_ITER


def test_log_density_zeros_without_nan_and_with_finite_gradients():
    X, _ = make_data(seed=4, n_samples=20)
    _, probs = make_start(seed=5)
    probs[0, 1, 2] = 0.0  # a level that is impossible in component 0
    probs[1, 0, :] = [0.0, 0.0, 1.0, 0.0]  # a deterministic answer in component 1
    probs /= probs.sum(-1, keepdims=True)
    family = _family()
    expected = numpy_log_density(X, probs)
    assert np.isneginf(expected).any() and np.isfinite(expected).any()

    def density(p):
        return family.log_component_density(
            CategoricalParams(jnp.full(K, 1.0 / K), p), jnp.asarray(X)
        )

    ours = np.asarray(density(jnp.asarray(probs)))
    assert not np.isnan(ours).any()
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=1e-12)

    # ∂/∂θ_kdl of Σ over the possible (n, k) of log p(x_n | θ_k) is
    # c_kdl / θ_kdl, with c the level counts of those samples: zero for an
    # impossible level.
    gradient = jax.grad(lambda p: jnp.sum(jnp.where(finite, density(p), 0.0)))(
        jnp.asarray(probs)
    )
    counts = numpy_level_counts(X, finite.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_gradient = np.where(counts > 0, counts / probs, 0.0)
    assert np.all(np.isfinite(gradient))
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-12)


def test_log_prior_matches_scipy():
    weights, probs = make_start(seed=6)
    ours = _family(alpha=ALPHA, beta=BETA).log_prior(
        CategoricalParams(jnp.asarray(weights), jnp.asarray(probs))
    )
    assert float(ours) == pytest.approx(
        numpy_log_prior(weights, probs, ALPHA, BETA), rel=1e-12
    )
    assert float(_family().log_prior(CategoricalParams(weights, probs))) == 0.0


def test_n_parameters():
    assert _family().n_parameters(K, D) == K * D * (L - 1) + K - 1
    assert _family(uniform=True).n_parameters(5, 7) == 5 * 7 * (L - 1)


def test_level_simplex_chart_round_trip():
    _, probs = make_start(seed=7)
    coords = LevelSimplex.to_unconstrained(jnp.asarray(probs), jnp.ones(D))
    np.testing.assert_allclose(np.sum(coords, axis=-1), 0.0, atol=1e-12)
    back = LevelSimplex.to_value(coords, jnp.ones(D))
    np.testing.assert_allclose(back, probs, rtol=1e-12)
    assert LevelSimplex.infeasibility(probs) is None
    assert "sum to" in LevelSimplex.infeasibility(probs / 2)
    assert "negative" in LevelSimplex.infeasibility(probs - 0.5)


def test_new_prior_strengths_and_data_do_not_recompile():
    counted = chex.assert_max_traces(em.run_em, n=1)
    fit = jax.jit(counted, static_argnames=("max_iter",))
    for seed in (0, 1):
        X, _ = make_data(seed=40 + seed)
        weights, probs = make_start(seed=42 + seed)
        family = _family(alpha=ALPHA + seed, beta=BETA * (1 + seed))
        start = CategoricalParams(jnp.asarray(weights), jnp.asarray(probs))
        fit(family, jnp.asarray(X), start, 1e-3, None, -jnp.inf, max_iter=5)
    chex.clear_trace_counter()


# -- the drivers ----------------------------------------------------------------------
def test_fit_restarts_keeps_the_best_numpy_em_fit():
    X, _ = make_data(seed=8)
    family = _family()
    key = jax.random.key(9)
    result = jaxmix.fit_restarts(
        family, X, key, K, n_init=3, method="random", max_iter=N_ITER, tol=1e-8
    )
    finals = []
    for r, restart_key in enumerate(jax.random.split(key, 3)):
        start = jaxmix.initialize(family, restart_key, X, K, method="random")
        n_iter = int(result.all.n_iter[r])
        weights, probs, trace = numpy_em(
            X, np.asarray(start.weights), np.asarray(start.probs), n_iter
        )
        np.testing.assert_allclose(result.all.params.probs[r], probs, rtol=1e-9)
        np.testing.assert_allclose(result.all.params.weights[r], weights, rtol=1e-9)
        finals.append(trace[-1])
    # The best final objective; restarts within 128 ulps of it tie, and the
    # lowest index wins (jaxmix.engine.batch.select_best).
    finals = np.asarray(finals)
    tied = finals >= finals.max() - 128 * np.finfo(np.float64).eps * abs(finals.max())
    assert int(result.best_index) == int(np.flatnonzero(tied)[0])


def test_fit_many_matches_numpy_em_on_ragged_data_sets():
    datasets = [
        make_data(seed=10 + b, n_samples=n)[0] for b, n in enumerate((N, 120, 97))
    ]
    Xs, sample_weight = jaxmix.pad_datasets(datasets)
    assert Xs.shape == (3, N, D)
    starts = [make_start(seed=20 + b) for b in range(3)]
    params = CategoricalParams(
        jnp.asarray(np.stack([s[0] for s in starts])),
        jnp.asarray(np.stack([s[1] for s in starts])),
    )
    result = jaxmix.fit_many(
        _family(),
        Xs,
        jax.random.key(0),
        K,
        sample_weight=sample_weight,
        params=params,
        max_iter=N_ITER,
        tol=0.0,
    )
    for b, X in enumerate(datasets):
        weights, probs, trace = numpy_em(X, *starts[b], N_ITER)
        np.testing.assert_allclose(result.params.weights[b], weights, rtol=1e-9)
        np.testing.assert_allclose(result.params.probs[b], probs, rtol=1e-9)
        assert float(result.log_likelihood[b]) == pytest.approx(trace[-1], rel=1e-10)


def test_select_n_components_bic_table():
    X, _ = make_data(seed=11)
    family = _family()
    sweep = jaxmix.select_n_components(
        family, X, jax.random.key(12), K, n_init=2, method="random", tol=1e-8
    )
    for k in range(1, K + 1):
        fit = sweep.model(n_components=k)
        assert fit.params.probs.shape == (k, D, L)
        log_lik = numpy_log_likelihood(
            X, np.asarray(fit.params.weights), np.asarray(fit.params.probs)
        )
        n_params = k * D * (L - 1) + k - 1
        assert sweep.log_likelihood[0, k - 1] == pytest.approx(log_lik, rel=1e-10)
        assert sweep.bic[0, k - 1] == pytest.approx(
            -2 * log_lik + n_params * np.log(N), rel=1e-10
        )
    assert sweep.best_n_components == K


# -- the autodiff checks and gradient fitting ------------------------------------------
@pytest.mark.parametrize("case", ["ml", "map"])
def test_own_m_step_passes_check(case):
    X, _ = make_data(seed=13)
    report = jaxmix.check.check_m_step(_family(**CASES[case]), X, n_components=K)
    assert report.ok, str(report)


def test_numpy_m_step_passes_check_and_wrong_ones_fail():
    X, _ = make_data(seed=13)
    family = _family(alpha=ALPHA, beta=BETA)

    def right(X, resp):
        weights, probs = numpy_m_step(X, resp, ALPHA, BETA)
        return {"weights": weights, "probs": probs}

    def unnormalised(X, resp):
        # Level counts over all of a component's answers, not per question.
        weights, _ = numpy_m_step(X, resp, ALPHA, BETA)
        counts = numpy_level_counts(X, resp) + BETA - 1
        return {"weights": weights, "probs": counts / counts.sum((1, 2), keepdims=True)}

    def prior_ignored(X, resp):
        weights, probs = numpy_m_step(X, resp, ALPHA, None)
        return {"weights": weights, "probs": probs}

    report = jaxmix.check.check_m_step(family, X, right, n_components=K)
    assert report.ok, str(report)
    for wrong, status in ((unnormalised, "infeasible"), (prior_ignored, None)):
        report = jaxmix.check.check_m_step(family, X, wrong, n_components=K)
        assert not report.ok
        assert report.failed == ("probs",), str(report)
        assert "probs" in str(report)
        if status:
            assert report["probs"].status == status


def test_fisher_identity():
    X, _ = make_data(seed=14)
    family = _family(alpha=ALPHA, beta=BETA)
    weights, probs = make_start(seed=15)
    params = CategoricalParams(weights, probs)
    report = jaxmix.check.check_fisher_identity(family, params, X)
    assert report.ok, str(report)
    assert set(report.gaps) == {"weights", "probs"}
    assert report.gradient_norms["probs"] > 1e-3  # not trivially zero

    def uniform_e_step(params, X):
        return np.full((X.shape[0], K), 1.0 / K)

    assert not jaxmix.check.check_fisher_identity(family, params, X, uniform_e_step).ok


def test_fit_gradient_reaches_the_em_optimum():
    X, _ = make_data(seed=16)
    family = _family()
    weights, probs = make_start(seed=17)
    start = CategoricalParams(jnp.asarray(weights), jnp.asarray(probs))
    params, trace = jaxmix.fit_gradient(
        family, jnp.asarray(X), start, optimizer=optax.lbfgs(), steps=100
    )
    assert float(trace[0]) == pytest.approx(
        numpy_log_likelihood(X, weights, probs) / N, rel=1e-12
    )
    np.testing.assert_allclose(np.sum(params.probs, axis=-1), 1.0, rtol=1e-12)
    _, _, em_trace = numpy_em(X, weights, probs, 300)
    gradient_value = numpy_log_likelihood(X, params.weights, params.probs) / N
    assert gradient_value == pytest.approx(em_trace[-1], abs=1e-9)


# -- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "match"),
    [
        (4.0, "codes 0 … 3"),
        (-1.0, "codes 0 … 3"),
        (1.5, "non-integer"),
        (np.nan, "NaN"),
    ],
)
def test_check_data_rejects_bad_codes(value, match):
    X, _ = make_data(seed=18, n_samples=10)
    X[3, 1] = value
    with pytest.raises(ValueError, match=match):
        _family().check_data(X)


def test_check_data_accepts_codes():
    X, _ = make_data(seed=18, n_samples=10)
    _family().check_data(X)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(level_prior=0.5),
        dict(level_prior=np.array([1.0, 2.0, np.inf, 1.0])),
        dict(level_prior=np.ones((D, L + 1))),
        dict(level_prior=np.ones((1, K, D, L))),
        dict(level_prior="flat"),
        dict(weight_concentration=0.9),
        dict(weight_concentration=np.ones((K, 1))),
        dict(weight_concentration=True),
    ],
)
def test_bad_prior_raises(kwargs):
    with pytest.raises(ValueError, match="weight_concentration|level_prior"):
        jaxmix.families.Categorical(n_levels=L, **kwargs)


@pytest.mark.parametrize("n_levels", [0, -2, 2.5, True, "4"])
def test_bad_n_levels_raises(n_levels):
    with pytest.raises(ValueError, match="n_levels"):
        jaxmix.families.Categorical(n_levels=n_levels)


# -- the estimator --------------------------------------------------------------------
@pytest.fixture(scope="module")
def survey():
    """Survey answers from two groups and a CategoricalMixture fitted to them."""
    X, labels = make_data(seed=30)
    model = jaxmix.CategoricalMixture(
        K, n_init=3, tol=1e-12, max_iter=500, random_state=0
    ).fit(X)
    return X, labels, model


def _matching(probs):
    """The component order of ``probs`` closest to TRUE_PROBS."""
    orders = [np.arange(K), np.arange(K)[::-1]]
    return min(orders, key=lambda o: np.abs(probs[o] - TRUE_PROBS).sum())


def test_estimator_recovers_level_probabilities(survey):
    X, labels, model = survey
    assert model.n_levels_ == L
    assert model.probs_.shape == (K, D, L) and model.probs_.dtype == np.float64
    order = _matching(model.probs_)
    # About two standard errors of a proportion estimated from ~60 answers.
    np.testing.assert_allclose(model.probs_[order], TRUE_PROBS, atol=0.12)
    np.testing.assert_allclose(model.weights_[order], TRUE_WEIGHTS, atol=0.1)
    # A fixed point of the NumPy EM map: the fit converged to a maximum.
    weights, probs, _ = numpy_em(X, model.weights_, model.probs_, 1)
    np.testing.assert_allclose(weights, model.weights_, atol=1e-6)
    np.testing.assert_allclose(probs, model.probs_, atol=1e-6)
    assert model.converged_


def test_estimator_scoring(survey):
    X, labels, model = survey
    expected = logsumexp(
        numpy_log_density(X, model.probs_) + np.log(model.weights_), axis=1
    )
    np.testing.assert_allclose(model.score_samples(X), expected, rtol=1e-12)
    n_params = K * D * (L - 1) + K - 1
    assert model.bic(X) == pytest.approx(
        -2 * expected.sum() + n_params * np.log(N), rel=1e-12
    )
    order = _matching(model.probs_)
    assert np.mean(order[model.predict(X)] == labels) > 0.9
    np.testing.assert_allclose(model.predict_proba(X).sum(1), 1.0, rtol=1e-12)


def test_estimator_sample(survey):
    _, _, model = survey
    codes, labels = model.sample(20000)
    assert codes.shape == (20000, D)
    assert set(np.unique(codes)) <= set(range(L))
    for k in range(K):
        answers = codes[labels == k]
        frequencies = np.stack([(answers == level).mean(0) for level in range(L)], -1)
        np.testing.assert_allclose(frequencies, model.probs_[k], atol=0.03)
    np.testing.assert_allclose(np.bincount(labels) / 20000, model.weights_, atol=0.02)


def test_estimator_map_matches_numpy_em():
    X, _ = make_data(seed=31)
    weights, probs = make_start(seed=32)
    ref_weights, ref_probs, ref_trace = numpy_em(
        X, weights, probs, N_ITER, alpha=ALPHA, beta=BETA
    )
    model = jaxmix.CategoricalMixture(
        K,
        tol=0.0,
        max_iter=N_ITER,
        weights_init=weights,
        probs_init=probs,
        weight_concentration_prior=ALPHA,
        level_prior=BETA,
    )
    with pytest.warns(jaxmix.ConvergenceWarning):
        model.fit(X.astype(int))  # integer codes are accepted
    assert model.n_iter_ == N_ITER
    np.testing.assert_allclose(model.weights_, ref_weights, rtol=1e-9)
    np.testing.assert_allclose(model.probs_, ref_probs, rtol=1e-9)
    np.testing.assert_allclose(model.lower_bounds_, ref_trace, rtol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "value", "match"),
    [
        (dict(n_levels=L), 4.0, "n_levels=4 needs codes 0 … 3"),
        (dict(), -1.0, "needs codes 0"),
        (dict(), 2.5, "non-integer"),
        (dict(level_prior=0.5), None, "level_prior"),
        (dict(level_prior=np.full(L, 0.5)), None, "level_prior must be finite"),
        (dict(level_prior=np.ones(L + 1)), None, "level_prior must be a scalar"),
        (dict(weight_concentration_prior=0.0), None, "weight_concentration_prior"),
        (dict(probs_init=np.full((K, D, L), 0.5)), None, "probs_init must sum to 1"),
        (dict(probs_init=np.full((K, D, 2), 0.5)), None, "n_levels=2 needs codes"),
        (dict(init_params="k-means++"), None, "init_params"),
        (dict(n_levels=0), None, "n_levels"),
    ],
)
def test_estimator_bad_input(kwargs, value, match):
    X, _ = make_data(seed=33, n_samples=20)
    if value is not None:
        X[5, 2] = value
    with pytest.raises(ValueError, match=match):
        jaxmix.CategoricalMixture(K, **kwargs).fit(X)


def test_estimator_rejects_unseen_levels_after_fit(survey):
    X, _, model = survey
    X = X.copy()
    X[0, 0] = L
    with pytest.raises(ValueError, match="codes 0 … 3"):
        model.score_samples(X)
