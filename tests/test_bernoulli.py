"""Mixture of Bernoullis against a float64 numpy reference of (MAP) EM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import logsumexp, xlogy
from sklearn.cluster import KMeans as SkKMeans
from sklearn.exceptions import ConvergenceWarning

import jaxmix
from jaxmix.engine import em
from jaxmix.estimators.base import _fit_restarts
from jaxmix.estimators.bernoulli_mixture import BernoulliMixture
from jaxmix.families import Bernoulli, BernoulliParams

# One data shape and one max_iter per API for every fit: few compilations.
K, D, N = 3, 12, 240
N_ITER = 100  # the estimator's default max_iter
FUNCTIONAL_ITER = 30


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


def make_data(seed=0, n_samples=N):
    """Binary data from K prototypes, some of whose probabilities are exactly 0 or 1."""
    rng = np.random.default_rng(seed)
    prototypes = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0], size=(K, D))
    labels = rng.choice(K, size=n_samples, p=[0.5, 0.3, 0.2])
    return (rng.random((n_samples, D)) < prototypes[labels]).astype(np.float64)


def make_start(seed=1):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(K, 5.0)), rng.uniform(0.2, 0.8, (K, D))


# -- the reference: textbook (MAP) EM in float64 numpy --------------------------
def numpy_log_density(X, means):
    """log p(x_n | θ_k) with 0·log 0 = 0 (scipy's xlogy)."""
    return (
        xlogy(X[:, None, :], means[None]) + xlogy(1 - X[:, None, :], 1 - means[None])
    ).sum(-1)


def numpy_log_prior(weights, means, alpha, beta):
    total = 0.0
    if alpha is not None:
        total += stats.dirichlet.logpdf(weights, np.broadcast_to(alpha, weights.shape))
    if beta is not None:
        a, b = (np.broadcast_to(v, means.shape) for v in beta)
        total += stats.beta.logpdf(means, a, b).sum()
    return total


def numpy_em(
    X, weights, means, n_iter, alpha=None, beta=None, uniform=False, sample_weight=None
):
    """Returns the final params and the objective at each iteration's E-step.

    With ``sample_weight`` every sum over samples is weighted and N is the
    total weight.
    """
    n_components = len(weights)
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight)
    n_samples = w.sum()
    if uniform:
        weights = np.full(n_components, 1.0 / n_components)
    trace = []
    for _ in range(n_iter):
        log_joint = numpy_log_density(X, means) + np.log(weights)
        log_norm = logsumexp(log_joint, axis=1)
        resp = np.exp(log_joint - log_norm[:, None]) * w[:, None]
        prior = numpy_log_prior(weights, means, None if uniform else alpha, beta)
        trace.append((w @ log_norm + prior) / n_samples)
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
        if beta is None:
            means = sums / counts[:, None]
        else:
            a, b = beta
            means = (sums + a - 1) / (counts[:, None] + a + b - 2)
        # Σ_n r_nk x_nd and N_k are rounded separately: their ratio can leave
        # [0, 1] by an ulp when a mean is 0 or 1.
        means = np.clip(means, 0.0, 1.0)
    return weights, means, np.array(trace)


CASES = {
    "ml": dict(),
    "uniform": dict(uniform=True),
    "map": dict(alpha=np.array([1.0, 2.0, 5.0]), beta=(2.0, 3.0)),
    "map_beta_only": dict(beta=(1.5, 1.5)),
}


def _estimator(case, weights, means, **kwargs):
    options = CASES[case]
    return BernoulliMixture(
        K,
        tol=0.0,
        weights_init=None if options.get("uniform") else weights,
        means_init=means,
        uniform_weights=options.get("uniform", False),
        weight_concentration_prior=options.get("alpha"),
        mean_prior=options.get("beta"),
        random_state=0,
        **kwargs,
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_estimator_matches_numpy_em(case):
    X = make_data()
    weights, means = make_start()
    ref_weights, ref_means, ref_trace = numpy_em(
        X, weights, means, N_ITER, **CASES[case]
    )
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        # tol=0 never converges: the warning is part of the behaviour.
        model = _estimator(case, weights, means, max_iter=N_ITER).fit(X)
    assert model.means_.dtype == np.float64
    assert model.n_iter_ == N_ITER
    np.testing.assert_allclose(model.weights_, ref_weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.means_, ref_means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.lower_bounds_, ref_trace, rtol=1e-10)
    assert model.lower_bound_ == pytest.approx(ref_trace[-1], rel=1e-10)


def test_functional_fit_matches_numpy_em():
    X = make_data(seed=3)
    weights, means = make_start(seed=4)
    alpha, beta = 2.0, (np.full(D, 2.0), np.linspace(1.0, 3.0, D))
    ref = numpy_em(X, weights, means, FUNCTIONAL_ITER, alpha=alpha, beta=beta)
    family = Bernoulli(weight_concentration=alpha, mean_prior=beta)
    result = jaxmix.fit(
        family,
        jnp.asarray(X),
        BernoulliParams(weights, means),
        max_iter=FUNCTIONAL_ITER,
        tol=0.0,
    )
    assert int(result.status) == jaxmix.MAX_ITER
    np.testing.assert_allclose(result.params.weights, ref[0], rtol=1e-9)
    np.testing.assert_allclose(result.params.means, ref[1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.trace, ref[2], rtol=1e-10)


def test_log_density_exact_at_boundaries():
    means = np.array([[0.0, 1.0, 0.5, 0.0], [0.2, 1.0, 0.0, 1.0], [1.0, 0.0, 0.3, 0.7]])
    X = np.array(
        [[0, 1, 1, 0], [1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1], [0.5, 1, 0.25, 0]]
    )
    ours = np.asarray(
        Bernoulli().log_component_density(
            BernoulliParams(jnp.full(3, 1 / 3), jnp.asarray(means)), jnp.asarray(X)
        )
    )
    expected = numpy_log_density(X, means)
    assert not np.isnan(ours).any()
    assert np.isneginf(expected).any() and np.isfinite(expected).any()
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=1e-12)


def test_log_prior_matches_scipy():
    rng = np.random.default_rng(5)
    weights, means = rng.dirichlet(np.ones(K)), rng.uniform(0.05, 0.95, (K, D))
    alpha, beta = np.array([1.0, 2.5, 4.0]), (2.0, np.linspace(1.0, 4.0, D))
    family = Bernoulli(weight_concentration=alpha, mean_prior=beta)
    ours = family.log_prior(BernoulliParams(jnp.asarray(weights), jnp.asarray(means)))
    assert float(ours) == pytest.approx(
        numpy_log_prior(weights, means, alpha, beta), rel=1e-12
    )
    assert float(Bernoulli().log_prior(BernoulliParams(weights, means))) == 0.0


# A Beta side of exactly 1 is no prior on that side; one within 1e-16 of 1 puts
# the mode N_k / (N_k + 1e-16) at a float64 1.0, where its own log density is
# −inf, so strengths are 1 or at least 1.01.
STRENGTH = st.one_of(st.just(1.0), st.floats(1.01, 5.0))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), alpha=STRENGTH, a=STRENGTH, b=STRENGTH)
def test_map_objective_never_decreases(seed, alpha, a, b):
    X = make_data(seed=seed)
    family = Bernoulli(weight_concentration=alpha, mean_prior=(a, b))
    params = jaxmix.initialize(
        family, jax.random.key(seed), jnp.asarray(X), K, method="random"
    )
    result = jaxmix.fit(
        family, jnp.asarray(X), params, max_iter=FUNCTIONAL_ITER, tol=0.0
    )
    trace = np.asarray(result.trace)[: int(result.n_iter)]
    assert np.all(np.isfinite(trace))
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))


def test_prior_strength_does_not_recompile():
    X = jnp.asarray(make_data())
    params = BernoulliParams(*(jnp.asarray(v) for v in make_start()))

    def run(alpha, a, b):
        family = Bernoulli(weight_concentration=alpha, mean_prior=(a, b))
        return jaxmix.fit(family, X, params, max_iter=FUNCTIONAL_ITER)

    run(2.0, 2.0, 2.0)
    before = em._fit_jit._cache_size()
    first, second = run(3.0, 1.5, 4.0), run(1.0, 5.0, 1.0)
    assert em._fit_jit._cache_size() == before
    assert not np.allclose(first.params.means, second.params.means)

    Xn = make_data()
    BernoulliMixture(
        K, weight_concentration_prior=2.0, mean_prior=(2, 2), random_state=0
    ).fit(Xn)
    before = _fit_restarts._cache_size()
    BernoulliMixture(
        K, weight_concentration_prior=4.0, mean_prior=(3, 1.5), random_state=0
    ).fit(Xn)
    assert _fit_restarts._cache_size() == before


# -- the estimator -----------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    X = make_data()
    return X, BernoulliMixture(K, random_state=0).fit(X)


def test_scoring_methods_match_numpy(fitted):
    X, model = fitted
    log_joint = numpy_log_density(X, model.means_) + np.log(model.weights_)
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
    assert model.converged_
    assert model.lower_bound_ == pytest.approx(model.score(X), abs=1e-3)


def test_bool_and_int_input_fit_the_same(fitted):
    X, model = fitted
    for data in (X.astype(bool), X.astype(np.int64)):
        other = BernoulliMixture(K, random_state=0).fit(data)
        np.testing.assert_allclose(other.means_, model.means_, rtol=1e-12)
        np.testing.assert_allclose(other.score_samples(data), model.score_samples(X))


def test_float32_fit_matches_float64_reference():
    # The same data and start fitted in float32 follow the float64 numpy EM
    # up to float32 round-off: 100 iterations, each rounding sums of 240
    # terms at eps = 6e-8, leave 2e-7 on the means (measured); the bound is
    # ten times that, and fails if the float32 path drops the prior, stops
    # early, or loses precision in its sums.
    X = make_data()
    weights, means = make_start()
    beta = (2.0, 2.0)
    ref_weights, ref_means, ref_trace = numpy_em(X, weights, means, N_ITER, beta=beta)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        model = BernoulliMixture(
            K,
            tol=0.0,
            max_iter=N_ITER,
            weights_init=weights,
            means_init=means,
            mean_prior=beta,
        ).fit(X.astype(np.float32))
    assert model.means_.dtype == np.float32 and model.weights_.dtype == np.float32
    assert np.all((model.means_ > 0) & (model.means_ < 1))
    np.testing.assert_allclose(model.means_, ref_means, rtol=0, atol=2e-6)
    np.testing.assert_allclose(model.weights_, ref_weights, rtol=0, atol=2e-6)
    assert model.lower_bound_ == pytest.approx(ref_trace[-1], rel=1e-6)


def test_sample_follows_the_model(fitted):
    _, model = fitted
    samples, labels = model.sample(20_000)
    assert samples.shape == (20_000, D) and set(np.unique(samples)) <= {0.0, 1.0}
    for k in range(K):
        chosen = samples[labels == k]
        # 5 standard errors of a Bernoulli mean on the component's samples.
        se = np.sqrt(model.means_[k] * (1 - model.means_[k]) / len(chosen)) + 1e-9
        assert np.all(np.abs(chosen.mean(0) - model.means_[k]) <= 5 * se + 1e-12)
    freq = np.bincount(labels, minlength=K) / len(labels)
    np.testing.assert_allclose(freq, model.weights_, atol=0.02)


def test_kmeans_init_starts_from_lloyd_clusters():
    # init_params="kmeans" is the M-step of one-hot labels of Lloyd's K-means.
    # With max_iter=0 the fitted model is that start: its means must be a
    # fixed point of Lloyd's iteration (scikit-learn's KMeans started there
    # stays there) and its weights the cluster sizes over N. Random
    # responsibilities (the option ignored) give means near the data mean, and
    # one-hot k-means++ seeds without Lloyd's iterations give single samples:
    # neither is a fixed point.
    X = make_data()
    start = BernoulliMixture(K, init_params="kmeans", max_iter=0, random_state=0)
    start.fit(X)
    lloyd = SkKMeans(K, init=start.means_, n_init=1, algorithm="lloyd", tol=0.0)
    lloyd.fit(X)
    np.testing.assert_allclose(start.means_, lloyd.cluster_centers_, atol=1e-12)
    counts = np.bincount(lloyd.labels_, minlength=K)
    np.testing.assert_allclose(start.weights_, counts / N, rtol=1e-12)
    # The fit with the default max_iter starts there (same random_state, same
    # start) and then follows the float64 numpy EM.
    model = BernoulliMixture(K, init_params="kmeans", random_state=0).fit(X)
    assert model.converged_
    ref_weights, ref_means, ref_trace = numpy_em(
        X, start.weights_, start.means_, model.n_iter_
    )
    np.testing.assert_allclose(model.means_, ref_means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.weights_, ref_weights, rtol=1e-9)
    np.testing.assert_allclose(model.lower_bounds_, ref_trace, rtol=1e-10)


def test_sample_weight_matches_weighted_numpy_em():
    # Weighted EM against the weighted float64 reference, with priors (whose
    # N is the total weight): catches weights ignored in the statistics, in
    # the objective, or in the MAP denominators (N instead of Σ w). The
    # reference itself honours the identity that integer weights repeat rows.
    X = make_data(seed=9)
    weights, means = make_start(seed=10)
    counts = np.random.default_rng(11).integers(0, 4, size=N).astype(np.float64)
    options = CASES["map"]
    ref_weights, ref_means, ref_trace = numpy_em(
        X, weights, means, N_ITER, sample_weight=counts, **options
    )
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        model = _estimator("map", weights, means, max_iter=N_ITER)
        model.fit(X, sample_weight=counts)
    np.testing.assert_allclose(model.weights_, ref_weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.means_, ref_means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.lower_bounds_, ref_trace, rtol=1e-10)
    repeated = np.repeat(X, counts.astype(int), axis=0)
    np.testing.assert_allclose(
        numpy_em(repeated, weights, means, N_ITER, **options)[1], ref_means, rtol=1e-9
    )


def test_priors_keep_held_out_likelihood_finite():
    # A feature that is 0 in every training sample gets an ML mean of exactly 0,
    # so held-out samples with a 1 there are impossible under ML: −inf, not NaN.
    train, test = make_data(seed=7), make_data(seed=8)
    train[:, 0] = 0.0
    test[::2, 0] = 1.0
    ml = BernoulliMixture(K, random_state=0).fit(train)
    bayes = BernoulliMixture(
        K, random_state=0, mean_prior=(2, 2), weight_concentration_prior=2
    ).fit(train)
    np.testing.assert_array_equal(ml.means_[:, 0], 0.0)
    ml_scores = ml.score_samples(test)
    assert not np.isnan(ml_scores).any()
    np.testing.assert_array_equal(np.isneginf(ml_scores), test[:, 0] == 1)
    assert np.all(np.isfinite(bayes.score_samples(test)))
    assert np.all((bayes.means_ > 0) & (bayes.means_ < 1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weight_concentration_prior=0.5), "weight_concentration_prior"),
        (dict(weight_concentration_prior=[1.0, 2.0]), "weight_concentration_prior"),
        (dict(weight_concentration_prior="a"), "weight_concentration_prior"),
        (dict(mean_prior=2.0), "pair"),
        (dict(mean_prior=(1.0, 2.0, 3.0)), "pair"),
        (dict(mean_prior=(0.5, 2.0)), "mean_prior a"),
        (dict(mean_prior=(2.0, np.nan)), "mean_prior b"),
        (dict(mean_prior=(2.0, np.ones(5))), "broadcastable"),
        (dict(means_init=np.full((K, D), 1.5)), "means_init"),
        (dict(means_init=np.full((K, D + 1), 0.5)), "means_init"),
        (dict(weights_init=[0.5, 0.5, 0.5]), "weights_init"),
        (dict(weights_init=np.ones(K) / K, uniform_weights=True), "uniform_weights"),
        (dict(uniform_weights="yes"), "uniform_weights"),
        (dict(init_params="nope"), "init_params"),
        (dict(init_params="k-means++"), "init_params"),
        (dict(n_components=N + 1), "n_samples"),
    ],
)
def test_bad_parameters(kwargs, message):
    kwargs = {"n_components": K, **kwargs}
    with pytest.raises(ValueError, match=message):
        BernoulliMixture(**kwargs).fit(make_data())


def test_non_binary_data(fitted):
    X, model = fitted
    for bad in (X * 2, X - 0.5):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            BernoulliMixture(K).fit(bad)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            model.predict(bad)
    with pytest.raises(ValueError, match="NaN"):
        BernoulliMixture(K).fit(np.where(X > 0, np.nan, 0.0))
    # With allow_nan, NaN marks a missing value; a row with nothing observed
    # is an error that names it.
    with pytest.raises(ValueError, match="Row 3 of X has no observed value"):
        BernoulliMixture(K, allow_nan=True).fit(
            np.where(np.arange(len(X))[:, None] == 3, np.nan, X)
        )


def test_not_fitted():
    with pytest.raises(jaxmix.NotFittedError):
        BernoulliMixture(K).predict(make_data())
    with pytest.raises(ValueError):
        BernoulliMixture(K).sample(3)


def test_get_params_round_trip():
    model = BernoulliMixture(4, mean_prior=(2, 2), uniform_weights=True)
    params = model.get_params()
    assert params["mean_prior"] == (2, 2) and params["uniform_weights"] is True
    assert "verbose" not in params
    assert BernoulliMixture().set_params(**params).get_params() == params


def test_impossible_samples_are_reported_not_nan():
    # Feature 0 is never on in training, so ML puts θ_k0 = 0 in every component
    # and a sample with it on has probability zero under every component.
    rng = np.random.default_rng(0)
    X = (rng.random((60, 4)) < 0.5).astype(float)
    X[:, 0] = 0
    model = BernoulliMixture(2, random_state=0).fit(X)
    odd = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    scores = model.score_samples(odd)
    assert np.isneginf(scores[0]) and np.isfinite(scores[1])
    with pytest.raises(ValueError, match="probability zero under every component"):
        model.predict_proba(odd)
    with pytest.raises(ValueError, match="rows \\[0\\]"):
        model.predict(odd)


def test_fitted_mixture_mean_is_the_data_mean():
    # Identity of the ML M-step: Σ_k π_k θ_k is the sample mean.
    X = (np.random.default_rng(3).random((80, 5)) < 0.3).astype(float)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        model = BernoulliMixture(3, max_iter=7, tol=0.0, random_state=0).fit(X)
    np.testing.assert_allclose(model.mean(), X.mean(axis=0), rtol=1e-12)
    cov = model.covariance()
    np.testing.assert_allclose(np.diag(cov), X.mean(0) * (1 - X.mean(0)), rtol=1e-12)
