"""Online (stepwise) EM: the recursion, its start, its limit, and partial_fit."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import jaxmix
from jaxmix.engine import em, online
from jaxmix.families import (
    Bernoulli,
    BernoulliParams,
    FactorAnalyzer,
    Gamma,
    GammaParams,
    Gaussian,
    GaussianParams,
    IsotropicGaussian,
    Laplace,
    StudentT,
)
from jaxmix.families.factor import FactorParams
from jaxmix.families.student import StudentTParams
from jaxmix.io import load_model, save_model

K, D = 2, 2
GAUSSIAN_MAP = Gaussian(
    "full",
    reg_covar=1e-6,
    weight_concentration=np.array([2.0, 3.0]),
    mean_prior=np.array([0.5, -0.5]),
    mean_precision=2.0,
    degrees_of_freedom=4.0,
    covariance_prior=np.array([[2.0, 0.3], [0.3, 1.0]]),
)
BERNOULLI_MAP = Bernoulli(
    weight_concentration=np.array([2.0, 1.5]), mean_prior=(np.array(2.0), 3.0)
)

# Most tests share one compiled step: a full-covariance Gaussian on batches of
# ROWS rows (what partial_fit pads a batch of 200 to); the rest few more.
FULL = Gaussian("full")
KMEANS = Gaussian("spherical", variance=1.0, uniform_weights=True)
ROWS = 256


@pytest.fixture(autouse=True)
def _float64(x64):
    yield


def _gaussian_data(n_samples: int, seed: int) -> np.ndarray:
    """Two overlapping Gaussian clusters in 2-D, 35% and 65% of the samples."""
    rng = np.random.default_rng(seed)
    first = rng.random(n_samples) < 0.35
    a = rng.normal([3.0, 1.0], [1.0, 0.7], (n_samples, 2))
    b = rng.multivariate_normal([-1.0, 0.0], [[1.0, 0.5], [0.5, 1.5]], n_samples)
    return np.where(first[:, None], a, b)


def _binary_data(n_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    probs = np.array([[0.9, 0.8, 0.2, 0.1, 0.3], [0.1, 0.3, 0.7, 0.9, 0.6]])
    labels = rng.random(n_samples) < 0.4
    return (rng.random((n_samples, 5)) < probs[labels.astype(int)]).astype(float)


def _gaussian_start(X: np.ndarray) -> GaussianParams:
    return GaussianParams(
        jnp.array([0.5, 0.5]),
        jnp.asarray(X[:2] + np.array([[0.1, -0.2], [0.3, 0.1]])),
        jnp.broadcast_to(jnp.eye(D), (K, D, D)),
    )


def _bernoulli_start() -> BernoulliParams:
    return BernoulliParams(
        jnp.array([0.6, 0.4]),
        jnp.array([[0.6, 0.6, 0.4, 0.4, 0.5], [0.4, 0.5, 0.6, 0.6, 0.5]]),
    )


# -- a float64 NumPy reference of the recursion ---------------------------------
def _gaussian_log_joint(params, X):
    weights, means, covariances = (np.asarray(a) for a in params)
    out = []
    for k in range(len(weights)):
        lower = np.linalg.cholesky(covariances[k])
        z = np.linalg.solve(lower, (X - means[k]).T)
        out.append(
            np.log(weights[k])
            - 0.5 * np.sum(z**2, axis=0)
            - np.sum(np.log(np.diag(lower)))
            - 0.5 * X.shape[1] * np.log(2 * np.pi)
        )
    return np.stack(out, axis=1)


def _gaussian_statistics(X, resp):
    """Raw moments: counts, Σ r x, Σ r x xᵀ (no centring, float64 suffices)."""
    return [resp.sum(0), resp.T @ X, np.einsum("nk,nd,ne->kde", resp, X, X)]


def _gaussian_map_m_step(stats, family):
    """The MAP M-step of the normal-inverse-Wishart family, from raw moments."""
    counts, sums, squares = stats
    alpha = np.asarray(family.weight_concentration)
    kappa, nu = family.mean_precision, family.degrees_of_freedom
    m0, psi = np.asarray(family.mean_prior), np.asarray(family.covariance_prior)
    n_components, n_features = sums.shape
    weights = (counts + alpha - 1) / (counts.sum() + alpha.sum() - n_components)
    means_ml = sums / counts[:, None]
    means = (sums + kappa * m0) / (counts + kappa)[:, None]
    covariances = []
    for k in range(n_components):
        scatter = squares[k] - counts[k] * np.outer(means_ml[k], means_ml[k])
        shrink = kappa * counts[k] / (kappa + counts[k])
        d = means_ml[k] - m0
        cov = (psi + scatter + shrink * np.outer(d, d)) / (
            nu + counts[k] + n_features + 2
        )
        covariances.append(cov + family.reg_covar * np.eye(n_features))
    return GaussianParams(weights, means, np.stack(covariances))


def _bernoulli_log_joint(params, X):
    weights, means = (np.asarray(a) for a in params)
    return np.log(weights) + X @ np.log(means).T + (1 - X) @ np.log(1 - means).T


def _bernoulli_statistics(X, resp):
    return [resp.sum(0), resp.T @ X]


def _bernoulli_map_m_step(stats, family):
    counts, sums = stats
    alpha = np.asarray(family.weight_concentration)
    a, b = (float(v) for v in family.mean_prior)
    weights = (counts + alpha - 1) / (counts.sum() + alpha.sum() - len(counts))
    means = (sums + a - 1) / (counts[:, None] + a + b - 2)
    return BernoulliParams(weights, means)


REFERENCES = {
    "gaussian": (_gaussian_log_joint, _gaussian_statistics, _gaussian_map_m_step),
    "bernoulli": (_bernoulli_log_joint, _bernoulli_statistics, _bernoulli_map_m_step),
}


@jax.jit
def _log_prior(family, params):
    return family.log_prior(params)


def _numpy_online(kind, family, params, batches, t0, alpha):
    """Stepwise EM in NumPy: s ← s + (γ_t / Z_t)(s̄ − s), θ = m_step(n_t s)."""
    log_joint, statistics, m_step = REFERENCES[kind]
    running, coverage, n_seen, objectives = None, 0.0, 0.0, []
    for step, (X, weights) in enumerate(batches, start=1):
        log_prob = log_joint(params, X)
        log_norm = logsumexp(log_prob, axis=1)
        unit = weights / weights.sum()
        batch = statistics(X, np.exp(log_prob - log_norm[:, None]) * unit[:, None])
        gamma = (step + t0) ** -alpha
        coverage = coverage * (1 - gamma) + gamma
        if running is None:
            running = batch
        else:
            running = [s + gamma / coverage * (b - s) for s, b in zip(running, batch)]
        n_seen += weights.sum()
        prior = float(_log_prior(family, jax.tree.map(jnp.asarray, params)))
        objectives.append(unit @ log_norm + prior / n_seen)
        params = m_step([n_seen * s for s in running], family)
    return params, np.array(objectives)


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
def test_online_step_matches_numpy_recursion(kind):
    rng = np.random.default_rng(7)
    if kind == "gaussian":
        family, X = GAUSSIAN_MAP, _gaussian_data(400, 1)
        start = _gaussian_start(X)
    else:
        family, X = BERNOULLI_MAP, _binary_data(400, 1)
        start = _bernoulli_start()
    # Unequal weights, a zero weight, t0 > 0 (the start's bias correction).
    weights = rng.uniform(0.2, 2.0, 400)
    weights[5] = 0.0
    batches = [(X[i : i + 100], weights[i : i + 100]) for i in range(0, 400, 100)]
    t0, alpha = 2.0, 0.6
    expected, objectives = _numpy_online(kind, family, start, batches, t0, alpha)
    state = online.init_online(family, start, X.shape[1])
    found = []
    for batch, batch_weights in batches:
        state = online.online_step(
            family,
            state,
            jnp.asarray(batch),
            jnp.asarray(batch_weights),
            t0=t0,
            alpha=alpha,
        )
        found.append(float(state.log_likelihood))
    assert bool(state.finite) and int(state.n_steps) == 4
    for name, want in expected._asdict().items():
        np.testing.assert_allclose(
            getattr(state.params, name), want, rtol=1e-10, atol=1e-12, err_msg=name
        )
    np.testing.assert_allclose(found, objectives, rtol=1e-10)
    np.testing.assert_allclose(float(state.n_seen), weights.sum(), rtol=1e-12)


FIRST_STEP_CASES = {
    "full": (FULL, False),
    "gaussian_map": (GAUSSIAN_MAP, False),
    "bernoulli_map": (BERNOULLI_MAP, False),
    "kmeans": (KMEANS, True),
}


@pytest.mark.parametrize("case", sorted(FIRST_STEP_CASES))
def test_first_step_is_one_em_iteration(case):
    """γ_1 = 1: one step on the whole data is one EM iteration, prior included."""
    family, hard = FIRST_STEP_CASES[case]
    # The shapes of the other tests' steps, so that only the fits compile.
    n_samples = ROWS if case in ("full", "kmeans") else 100
    if case == "bernoulli_map":
        X = _binary_data(n_samples, 2)
        start = _bernoulli_start()
    else:
        X = _gaussian_data(n_samples, 2)
        start = _gaussian_start(X)
        if case == "kmeans":
            start = start._replace(covariances=jnp.ones(K), weights=jnp.full(K, 0.5))
    weights = np.random.default_rng(3).uniform(0.5, 1.5, n_samples)
    X, weights = jnp.asarray(X), jnp.asarray(weights)
    state = online.init_online(family, start, X.shape[1])
    state = online.online_step(family, state, X, weights, t0=0.0, alpha=0.8, hard=hard)
    one = jaxmix.fit(family, X, start, max_iter=1, sample_weight=weights, hard=hard)
    for name, want in one.params._asdict().items():
        np.testing.assert_allclose(
            getattr(state.params, name), want, rtol=1e-12, atol=1e-14, err_msg=name
        )
    np.testing.assert_allclose(state.log_likelihood, one.log_likelihood, rtol=1e-12)


def _parameter_error(params, reference) -> float:
    """Largest difference of weights, means and covariances, components matched."""
    order = np.argsort(np.asarray(params.means)[:, 0])
    reference_order = np.argsort(np.asarray(reference.means)[:, 0])
    return max(
        np.max(np.abs(np.asarray(a)[order] - np.asarray(b)[reference_order]))
        for a, b in zip(params, reference)
    )


@jax.jit
def _log_likelihoods(family, params, X):
    return jax.nn.logsumexp(em.log_joint(family, params, X), axis=1)


def _mean_log_likelihood(family, params, X) -> float:
    return float(jnp.mean(_log_likelihoods(family, params, jnp.asarray(X))))


def test_online_approaches_the_batch_optimum():
    """One pass in batches of 200: closer to the full-data EM fit as N grows."""
    largest = 20_000
    errors, gaps = {}, {}
    for n_samples in (2_000, largest):
        errors[n_samples], gaps[n_samples] = [], []
        for seed in range(3):
            X = _gaussian_data(n_samples, seed)
            # The start an online fit would use: k-means on the first batch
            # (the estimators' default); the batch fit starts there too.
            start = jaxmix.initialize(
                FULL, jax.random.key(seed), jnp.asarray(X[:200]), K
            )
            # Both sizes as one compiled fit: the smaller one padded with
            # zero-weight rows.
            data = np.concatenate([X, np.repeat(X[:1], largest - n_samples, 0)])
            weights = (np.arange(largest) < n_samples).astype(float)
            batch = jaxmix.fit(
                FULL,
                jnp.asarray(data),
                start,
                max_iter=500,
                tol=1e-10,
                sample_weight=jnp.asarray(weights),
            )
            result = jaxmix.fit_online(
                FULL,
                np.split(X, n_samples // 200),
                start,
                t0=0.0,
                alpha=0.7,
                batch_size=ROWS,
            )
            errors[n_samples].append(_parameter_error(result.params, batch.params))
            gaps[n_samples].append(
                _mean_log_likelihood(FULL, batch.params, X)
                - _mean_log_likelihood(FULL, result.params, X)
            )
    # The batch fit is the optimum the online fit approaches from below.
    assert min(gaps[2_000] + gaps[largest]) > -1e-9
    assert np.mean(errors[largest]) < 0.5 * np.mean(errors[2_000])
    assert np.mean(gaps[largest]) < 0.5 * np.mean(gaps[2_000])
    assert max(gaps[largest]) < 1e-3
    assert max(errors[largest]) < 0.1


def test_fit_online_pads_short_batches():
    """A short batch is padded: the same steps as unpadded, no new program."""
    X = _gaussian_data(530, 4)
    weights = np.random.default_rng(4).uniform(0.5, 1.5, 530)
    start = _gaussian_start(X)
    batches = [(X[i : i + 200], weights[i : i + 200]) for i in range(0, 530, 200)]
    result = jaxmix.fit_online(
        FULL, batches, start, t0=1.0, alpha=0.9, n_epochs=2, batch_size=ROWS
    )
    assert result.trace.shape == (6,)
    # By hand, unpadded; from the second epoch the prior's sample size is N.
    state = online.init_online(FULL, start, D)
    for epoch in range(2):
        for batch, batch_weights in batches:
            state = online.online_step(
                FULL,
                state,
                jnp.asarray(batch),
                jnp.asarray(batch_weights),
                t0=1.0,
                alpha=0.9,
                sample_size=None if epoch == 0 else weights.sum(),
            )
    for name, want in state.params._asdict().items():
        np.testing.assert_allclose(
            getattr(result.params, name), want, rtol=1e-12, err_msg=name
        )
    # Other batch sizes, and continuing from a state: still the one program.
    compiled = online._step_jit._cache_size()
    more = jaxmix.fit_online(
        FULL, [X[:77], X[77:250]], result.state, t0=1.0, alpha=0.9, batch_size=ROWS
    )
    assert int(more.state.n_steps) == 8
    assert online._step_jit._cache_size() == compiled


def test_empty_and_non_finite_batches_change_nothing():
    X = _gaussian_data(ROWS, 15)
    start = _gaussian_start(X)
    state = online.online_step(FULL, online.init_online(FULL, start, D), X)
    empty = online.online_step(FULL, state, X, jnp.zeros(ROWS))
    bad = online.online_step(FULL, state, np.where(X > 2.5, np.nan, X))
    assert bool(empty.finite) and not bool(bad.finite)
    for after in (empty, bad):
        assert int(after.n_steps) == 1
        kept = after._replace(finite=state.finite, log_likelihood=state.log_likelihood)
        for new, old in zip(jax.tree.leaves(kept), jax.tree.leaves(state)):
            np.testing.assert_array_equal(new, old)


def test_partial_fit_equals_fit_online():
    X = _gaussian_data(1_000, 5)
    weights = np.random.default_rng(5).uniform(0.5, 1.5, 1_000)
    start = _gaussian_start(X)
    model = jaxmix.GaussianMixture(
        K,
        weights_init=np.asarray(start.weights),
        means_init=np.asarray(start.means),
        precisions_init=np.linalg.inv(np.asarray(start.covariances)),
    )
    batches = [(X[i : i + 200], weights[i : i + 200]) for i in range(0, 1_000, 200)]
    for batch, batch_weights in batches:
        model.partial_fit(batch, sample_weight=batch_weights)
    result = jaxmix.fit_online(FULL, batches, start, t0=0.0, alpha=0.7, batch_size=ROWS)
    np.testing.assert_allclose(model.weights_, result.params.weights, rtol=1e-10)
    np.testing.assert_allclose(model.means_, result.params.means, rtol=1e-10)
    np.testing.assert_allclose(
        model.covariances_, result.params.covariances, rtol=1e-10
    )
    np.testing.assert_allclose(model.lower_bounds_, result.trace, rtol=1e-10)
    assert model.n_iter_ == 5 and model.lower_bound_ == model.lower_bounds_[-1]
    assert not model.converged_
    np.testing.assert_allclose(
        model.precisions_, np.linalg.inv(model.covariances_), rtol=1e-8
    )


def test_bernoulli_partial_fit_equals_fit_online():
    X = _binary_data(600, 6)
    start = _bernoulli_start()
    model = jaxmix.BernoulliMixture(
        K,
        weights_init=np.asarray(start.weights),
        means_init=np.asarray(start.means),
        mean_prior=(2.0, 3.0),
        weight_concentration_prior=2.0,
    )
    batches = np.split(X, 3)
    for batch in batches:
        model.partial_fit(batch)
    # The estimator's family holds its priors at full shape (K,) and (K, D).
    family = Bernoulli(
        weight_concentration=np.full(K, 2.0),
        mean_prior=(np.full((K, 5), 2.0), np.full((K, 5), 3.0)),
    )
    result = jaxmix.fit_online(
        family, batches, start, t0=0.0, alpha=0.7, batch_size=ROWS
    )
    np.testing.assert_allclose(model.weights_, result.params.weights, rtol=1e-10)
    np.testing.assert_allclose(model.means_, result.params.means, rtol=1e-10)


def test_kmeans_partial_fit_is_minibatch_kmeans():
    """Equal batches, no re-assignment: scikit-learn's MiniBatchKMeans update."""
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    X = _gaussian_data(800, 8)
    init = X[[0, 1, 2]]
    ours = jaxmix.KMeans(3, init=init)
    theirs = sklearn_cluster.MiniBatchKMeans(
        3, init=init, n_init=1, reassignment_ratio=0.0
    )
    for batch in np.split(X, 4):
        ours.partial_fit(batch)
        theirs.partial_fit(batch)
        np.testing.assert_allclose(
            ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-10
        )
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)
    assert ours.n_iter_ == 4
    # The functional form: hard stepwise EM with γ_t = 1/t.
    start = GaussianParams(jnp.full(3, 1 / 3), jnp.asarray(init), jnp.ones(3))
    result = jaxmix.fit_online(
        KMEANS, np.split(X, 4), start, t0=0.0, alpha=1.0, hard=True, batch_size=ROWS
    )
    np.testing.assert_allclose(ours.cluster_centers_, result.params.means, rtol=1e-10)


@pytest.mark.parametrize("name", ["GaussianMixture", "BernoulliMixture", "KMeans"])
def test_partial_fit_fixes_the_number_of_features(name):
    if name == "BernoulliMixture":
        X, model = _binary_data(300, 9), jaxmix.BernoulliMixture(K, random_state=0)
    elif name == "KMeans":
        X, model = _gaussian_data(300, 9), jaxmix.KMeans(K, init="random")
    else:
        X = _gaussian_data(300, 9)
        model = jaxmix.GaussianMixture(K, init_params="random_from_data")
    model.partial_fit(X[:150])
    assert model.n_features_in_ == X.shape[1]
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(X[150:, :1])
    model.partial_fit(X[150:])
    assert model.n_iter_ == 2
    assert model.predict(X).shape == (300,)


def test_partial_fit_after_fit_and_after_loading():
    X = _binary_data(600, 10)
    model = jaxmix.BernoulliMixture(K, random_state=0).fit(X[:400])
    fitted = BernoulliParams(jnp.asarray(model.weights_), jnp.asarray(model.means_))
    model.partial_fit(X[400:600])
    # A new online fit from the fitted params: its first step is one EM step.
    one = jaxmix.fit(model.family_, jnp.asarray(X[400:600]), fitted, max_iter=1)
    np.testing.assert_allclose(model.means_, one.params.means, rtol=1e-12)
    assert model.n_iter_ == 1 and len(model.lower_bounds_) == 1
    buffer = io.BytesIO()
    save_model(buffer, model)  # every attribute partial_fit sets can be stored
    buffer.seek(0)
    loaded = load_model(buffer)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    loaded.partial_fit(X[:200])
    assert loaded.n_iter_ == 1  # the online state is not saved: a new online fit
    model.partial_fit(X[:200])
    assert model.n_iter_ == 2  # the original continues its own
    Y = _gaussian_data(400, 10)
    kmeans = jaxmix.KMeans(K, init="random", random_state=0).partial_fit(Y[:200])
    buffer = io.BytesIO()
    save_model(buffer, kmeans)
    buffer.seek(0)
    assert load_model(buffer).partial_fit(Y[200:]).n_iter_ == 1
    assert kmeans.partial_fit(Y[200:]).n_iter_ == 2


@pytest.mark.parametrize(
    ("t0", "alpha"),
    [(0.0, 0.5), (0.0, 1.5), (0.0, True), (-1.0, 0.7), (np.inf, 0.7), ("1", 0.7)],
)
def test_bad_schedule_raises(t0, alpha):
    X = _gaussian_data(50, 11)
    start = _gaussian_start(X)
    state = online.init_online(FULL, start, D)
    with pytest.raises(ValueError, match="t0|alpha"):
        online.online_step(FULL, state, jnp.asarray(X), t0=t0, alpha=alpha)
    with pytest.raises(ValueError, match="t0|alpha"):
        jaxmix.fit_online(FULL, [X], start, t0=t0, alpha=alpha)


def test_families_without_running_statistics_are_refused():
    X = jnp.asarray(_gaussian_data(50, 12))
    locations = X[:K]
    laplace = Laplace(scale=1.0)
    with pytest.raises(ValueError, match="not sums"):
        online.init_online(laplace, laplace.params_at(locations), D)
    isotropic = IsotropicGaussian()
    with pytest.raises(ValueError, match="neutral element"):
        online.init_online(isotropic, isotropic.params_at(locations), D)
    gamma_start = GammaParams(jnp.full(K, 0.5), jnp.ones((K, D)), jnp.ones((K, D)))
    with pytest.raises(ValueError, match="generalized EM"):
        online.init_online(Gamma(), gamma_start, D)
    with pytest.raises(ValueError, match="generalized EM"):
        jaxmix.fit_online(Gamma(), [np.ones((5, D))], gamma_start)
    # Statistics that hold the current E-step's precision weights or factor
    # posteriors cannot be averaged around a fixed reference.
    student_start = StudentTParams(
        jnp.full(K, 0.5), locations, jnp.stack([jnp.eye(D)] * K), jnp.full(K, 5.0)
    )
    with pytest.raises(ValueError, match="StudentT.*current E-step"):
        online.init_online(StudentT(), student_start, D)
    factor_start = FactorParams(
        jnp.full(K, 0.5), locations, jnp.ones((K, D, 1)), jnp.ones((K, D))
    )
    with pytest.raises(ValueError, match="FactorAnalyzer.*current E-step"):
        jaxmix.fit_online(FactorAnalyzer(), [np.ones((5, D))], factor_start)


def test_bad_batches_are_named():
    X = _gaussian_data(300, 13)
    start = _gaussian_start(X)
    bad = X[200:].copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="batch 2: X contains NaN"):
        jaxmix.fit_online(FULL, [X[:100], X[100:200], bad], start, batch_size=ROWS)
    with pytest.raises(ValueError, match="batch 1: 1 features"):
        jaxmix.fit_online(FULL, [X[:100], X[100:200, :1]], start, batch_size=ROWS)
    with pytest.raises(ValueError, match="one-shot iterator"):
        jaxmix.fit_online(FULL, iter([X[:100]]), start, n_epochs=2, batch_size=ROWS)
    with pytest.raises(ValueError, match="no batch"):
        jaxmix.fit_online(FULL, [], start)


def test_online_step_vmaps_over_states():
    """The step is pure: a batch of states (e.g. starts) steps together."""
    X = jnp.asarray(_binary_data(100, 14))
    weights = jnp.ones(100)
    starts = [
        _bernoulli_start(),
        _bernoulli_start()._replace(weights=jnp.array([0.3, 0.7])),
    ]
    states = [online.init_online(BERNOULLI_MAP, p, 5) for p in starts]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    together = jax.jit(
        jax.vmap(
            lambda s: online.step_online(
                BERNOULLI_MAP, s, X, weights, 2.0, 0.6, 0.0, hard=False
            )
        )
    )(stacked)
    for i, state in enumerate(states):
        alone = online.online_step(BERNOULLI_MAP, state, X, weights, t0=2.0, alpha=0.6)
        np.testing.assert_allclose(together.params.means[i], alone.params.means)
