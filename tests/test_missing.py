"""EM with missing values (NaN entries of X), against float64 NumPy references.

The references below condition every row on its own observed features with
plain loops and ``np.linalg``; scikit-learn rejects NaN, so it is no oracle
here.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmix
import jaxmix.check
from jaxmix.families import Bernoulli, Categorical, Gaussian, Poisson
from jaxmix.families.bernoulli import BernoulliParams
from jaxmix.families.categorical import CategoricalParams
from jaxmix.families.gaussian import GaussianParams
from jaxmix.families.poisson import PoissonParams

TYPES = ("full", "tied", "diag", "spherical")
N, D, K, ITERATIONS = 60, 4, 3, 20


# -- references -----------------------------------------------------------------
def _to_full(covariance_type, covariances, K, D):
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return np.broadcast_to(covariances, (K, D, D))
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in covariances])
    return np.stack([c * np.eye(D) for c in covariances])


def _gaussian_step(X, weights, means, covariances, covariance_type, reg):
    """One missing-data EM iteration, row by row; returns params and mean ll."""
    K, D = means.shape
    full = _to_full(covariance_type, covariances, K, D)
    log_prob = np.zeros((len(X), K))
    completed = np.zeros((len(X), K, D))
    conditional = np.zeros((len(X), K, D, D))
    for n, x in enumerate(X):
        o = ~np.isnan(x)
        m = ~o
        for k in range(K):
            cov, mean = full[k], means[k]
            cov_oo = cov[np.ix_(o, o)]
            gain = np.linalg.solve(cov_oo, cov[np.ix_(o, m)])
            residual = x[o] - mean[o]
            log_prob[n, k] = -0.5 * (
                o.sum() * np.log(2 * np.pi)
                + np.linalg.slogdet(cov_oo)[1]
                + residual @ np.linalg.solve(cov_oo, residual)
            )
            completed[n, k, o] = x[o]
            completed[n, k, m] = mean[m] + gain.T @ residual
            conditional[n, k][np.ix_(m, m)] = (
                cov[np.ix_(m, m)] - cov[np.ix_(m, o)] @ gain
            )
    log_joint = log_prob + np.log(weights)
    log_norm = np.logaddexp.reduce(log_joint, axis=1)
    resp = np.exp(log_joint - log_norm[:, None])
    counts = resp.sum(0)
    new_means = np.einsum("nk,nkd->kd", resp, completed) / counts[:, None]
    centred = completed - new_means
    scatter = np.einsum("nk,nkd,nke->kde", resp, centred, centred)
    scatter = scatter + np.einsum("nk,nkde->kde", resp, conditional)
    cov = scatter / counts[:, None, None]
    if covariance_type == "full":
        new = cov + reg * np.eye(D)
    elif covariance_type == "tied":
        new = scatter.sum(0) / counts.sum() + reg * np.eye(D)
    elif covariance_type == "diag":
        new = np.stack([np.diag(c) for c in cov]) + reg
    else:
        new = np.array([np.mean(np.diag(c)) for c in cov]) + reg
    return (counts / counts.sum(), new_means, new), log_norm.mean()


def _discrete_step(kind, X, weights, table):
    """One missing-data EM iteration for Bernoulli, Poisson or categorical data."""
    n_levels = 3
    log_prob = np.zeros((len(X), K))
    expected = []
    for n, x in enumerate(X):
        rows = []
        for k in range(K):
            total, row = 0.0, []
            for d, value in enumerate(x):
                if kind == "bernoulli":
                    p = table[k, d]
                    guess = p if np.isnan(value) else value
                    if not np.isnan(value):
                        total += np.log(p if value else 1 - p)
                elif kind == "poisson":
                    rate = table[k, d]
                    guess = rate if np.isnan(value) else value
                    if not np.isnan(value):
                        total += (
                            value * np.log(rate)
                            - rate
                            - np.sum(np.log(np.arange(1, value + 1)))
                        )
                else:
                    probs = table[k, d]
                    guess = probs if np.isnan(value) else np.eye(n_levels)[int(value)]
                    if not np.isnan(value):
                        total += np.log(probs[int(value)])
                row.append(guess)
            log_prob[n, k] = total
            rows.append(row)
        expected.append(rows)
    expected = np.asarray(expected, dtype=float)
    log_joint = log_prob + np.log(weights)
    log_norm = np.logaddexp.reduce(log_joint, axis=1)
    resp = np.exp(log_joint - log_norm[:, None])
    counts = resp.sum(0)
    sums = np.einsum("nk,nkd...->kd...", resp, expected)
    new = sums / (counts[:, None, None] if kind == "categorical" else counts[:, None])
    return (counts / counts.sum(), new), log_norm.mean()


# -- data and fits ---------------------------------------------------------------
def _with_missing(X, rng, fraction=0.25):
    mask = rng.random(X.shape) < fraction
    mask[mask.all(axis=1), 0] = False
    mask[:3] = False  # complete rows
    mask[3, :] = [True] * (D - 1) + [False]  # one observed feature
    return np.where(mask, np.nan, X)


@pytest.fixture(scope="module")
def gaussian_data():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(D, D))
    X = rng.normal(size=(N, D)) @ mixing + np.array([5.0, -3.0, 0.0, 100.0])
    X[: N // 2] += 4
    data = _with_missing(X, rng)
    means = data[:K].copy()
    spread = np.cov(X.T)
    starts = {
        "full": np.stack([spread * (1 + 0.3 * k) for k in range(K)]),
        "tied": spread,
        "diag": np.stack([np.diag(spread) * (1 + 0.3 * k) for k in range(K)]),
        "spherical": np.array([np.trace(spread) / D * (1 + 0.3 * k) for k in range(K)]),
    }
    return X, data, means, starts


@pytest.fixture(scope="module")
def gaussian_fits(gaussian_data):
    """jaxmix fits (one whole, one in blocks of 16 rows) per covariance type."""
    _, data, means, starts = gaussian_data
    fits = {}
    with jax.enable_x64(True):
        for covariance_type in TYPES:
            family = Gaussian(covariance_type, missing_values=True)
            start = _start(means, starts[covariance_type])
            whole = jaxmix.fit(
                family, jnp.asarray(data), start, max_iter=ITERATIONS, tol=-1.0
            )
            blocks = jaxmix.fit(
                family,
                jnp.asarray(data),
                start,
                max_iter=ITERATIONS,
                tol=-1.0,
                chunk_size=16,
            )
            fits[covariance_type] = jax.tree.map(np.asarray, (whole, blocks))
    return fits


def _start(means, covariances):
    return GaussianParams(
        jnp.full((K,), 1.0 / K), jnp.asarray(means), jnp.asarray(covariances)
    )


# -- Gaussian EM -----------------------------------------------------------------
@pytest.mark.parametrize("covariance_type", TYPES)
def test_gaussian_matches_numpy_reference(
    gaussian_data, gaussian_fits, covariance_type
):
    _, data, means, starts = gaussian_data
    params = (np.full(K, 1.0 / K), means, starts[covariance_type])
    trace = []
    for _ in range(ITERATIONS):
        params, log_likelihood = _gaussian_step(data, *params, covariance_type, 1e-6)
        trace.append(log_likelihood)
    whole, blocks = gaussian_fits[covariance_type]
    for fit in (whole, blocks):
        for got, expected in zip(fit.params, params):
            np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(fit.trace, trace, rtol=1e-10)
    # Exact EM: the observed-data log-likelihood never decreases.
    assert np.all(np.diff(trace) > -1e-12)
    assert jaxmix.check.check_monotone(whole.trace).ok


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_gaussian_many_features_matches_numpy_reference(covariance_type):
    # D = 14: sub-blocks condition at every size written out entry by entry
    # (1 to 8 missing features), and a last one mixes rows with 8 missing
    # (conditioned on the missing block) and rows with 9 to 14 missing
    # (conditioned on the observed block, down to nothing observed).
    rng = np.random.default_rng(7)
    d, iterations = 14, 3
    sizes = [(0, 20), (1, 492), (3, 512), (4, 512), (6, 512), (8, 612)]
    sizes += [(9, 150), (12, 150), (14, 12)]
    counts = rng.permutation(np.concatenate([np.full(m, c) for c, m in sizes]))
    n = len(counts)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 2.0
    X[: n // 2] += 3
    missing = np.argsort(rng.random((n, d)), axis=1) < counts[:, None]
    data = np.where(missing, np.nan, X)
    spread = np.cov(X.T)
    means = X[rng.choice(n, K, replace=False)]
    covariances = spread if covariance_type == "tied" else np.stack([spread] * K)
    params = (np.full(K, 1.0 / K), means, covariances)
    trace = []
    for _ in range(iterations):
        params, log_likelihood = _gaussian_step(data, *params, covariance_type, 1e-6)
        trace.append(log_likelihood)
    with jax.enable_x64(True):
        fit = jaxmix.fit(
            Gaussian(covariance_type, missing_values=True),
            jnp.asarray(data),
            _start(means, covariances),
            max_iter=iterations,
            tol=-1.0,
        )
    for got, expected in zip(fit.params, params):
        np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(fit.trace, trace, rtol=1e-10)


def test_gaussian_vmap_equals_one_by_one(gaussian_data, gaussian_fits):
    _, data, means, starts = gaussian_data
    family = Gaussian("full", missing_values=True)
    other = np.roll(means, 1, axis=0)
    with jax.enable_x64(True):
        starts_batch = jax.tree.map(
            lambda a, b: jnp.stack([a, b]),
            _start(means, starts["full"]),
            _start(other, starts["full"]),
        )
        batched = jax.vmap(
            lambda p: jaxmix.fit(
                family, jnp.asarray(data), p, max_iter=ITERATIONS, tol=-1.0
            )
        )(starts_batch)
        second = jaxmix.fit(
            family,
            jnp.asarray(data),
            _start(other, starts["full"]),
            max_iter=ITERATIONS,
            tol=-1.0,
        )
    first = gaussian_fits["full"][0]
    for i, single in enumerate((first, second)):
        for got, expected in zip(batched.params, single.params):
            np.testing.assert_allclose(
                np.asarray(got)[i], expected, rtol=1e-12, atol=1e-12
            )


@pytest.mark.parametrize("covariance_type", TYPES)
def test_complete_data_unchanged(gaussian_data, covariance_type):
    X, _, means, starts = gaussian_data
    with jax.enable_x64(True):
        start = _start(means[:, :] * 0 + X[:K], starts[covariance_type])
        # max_iter as in gaussian_fits: the missing-values fit reuses its program.
        plain = jaxmix.fit(
            Gaussian(covariance_type),
            jnp.asarray(X),
            start,
            max_iter=ITERATIONS,
            tol=-1.0,
        )
        missing = jaxmix.fit(
            Gaussian(covariance_type, missing_values=True),
            jnp.asarray(X),
            start,
            max_iter=ITERATIONS,
            tol=-1.0,
        )
    for got, expected in zip(missing.params, plain.params):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_float32_observed_density_on_correlated_data(covariance_type):
    """Strongly correlated features, far from the origin: float32 stays close."""
    rng = np.random.default_rng(5)
    latent = rng.normal(size=(200, 1))
    X = latent @ np.ones((1, D)) + 0.01 * rng.normal(size=(200, D)) + 50.0
    data = _with_missing(X, rng, fraction=0.4)
    covariance = np.cov(X.T) + 1e-6 * np.eye(D)
    covariances = (
        covariance if covariance_type == "tied" else np.stack([covariance] * K)
    )
    means = X[:K] + 0.05
    family = Gaussian(covariance_type, missing_values=True)
    centre = np.nanmean(data, axis=0)  # as the engine does
    with jax.enable_x64(True):
        params = _start(means - centre, covariances)
        exact = family.log_component_density(params, jnp.asarray(data - centre))
    single = family.log_component_density(
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params),
        jnp.asarray(data - centre, jnp.float32),
    )
    # Against float32 round-off of the same model on complete data (the
    # covariance's own factorisation): conditioning adds little to it.
    plain = Gaussian(covariance_type)
    complete = np.asarray(X - centre)
    with jax.enable_x64(True):
        exact_complete = plain.log_component_density(params, jnp.asarray(complete))
    single_complete = plain.log_component_density(
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params),
        jnp.asarray(complete, jnp.float32),
    )
    baseline = np.max(np.abs(np.asarray(single_complete) - np.asarray(exact_complete)))
    error = np.max(np.abs(np.asarray(single) - np.asarray(exact)))
    assert error <= 4 * baseline + 1e-4, (error, baseline)


# -- discrete families --------------------------------------------------------------
def _discrete_case(kind, rng):
    if kind == "bernoulli":
        X = (rng.random((N, D)) < np.linspace(0.2, 0.8, D)).astype(float)
        table = rng.uniform(0.2, 0.8, (K, D))
        return Bernoulli(missing_values=True), X, table, BernoulliParams
    if kind == "poisson":
        X = rng.poisson(np.linspace(1, 5, D), (N, D)).astype(float)
        table = rng.uniform(1, 5, (K, D))
        return Poisson(missing_values=True), X, table, PoissonParams
    X = rng.integers(0, 3, (N, D)).astype(float)
    table = rng.dirichlet(np.ones(3), (K, D))
    return Categorical(n_levels=3, missing_values=True), X, table, CategoricalParams


@pytest.mark.parametrize("kind", ["bernoulli", "poisson", "categorical"])
def test_discrete_matches_numpy_reference(kind):
    rng = np.random.default_rng(1)
    family, X, table, params_type = _discrete_case(kind, rng)
    data = _with_missing(X, rng)
    weights = np.full(K, 1.0 / K)
    with jax.enable_x64(True):
        start = params_type(jnp.asarray(weights), jnp.asarray(table))
        fit = jaxmix.fit(
            family, jnp.asarray(data), start, max_iter=10, tol=-1.0, chunk_size=16
        )
    params, trace = (weights, table), []
    for _ in range(10):
        params, log_likelihood = _discrete_step(kind, data, *params)
        trace.append(log_likelihood)
    for got, expected in zip(fit.params, params):
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(fit.trace), trace, rtol=1e-10)
    assert np.all(np.diff(trace) > -1e-12)


# -- the checker -------------------------------------------------------------------
@pytest.mark.parametrize("covariance_type", TYPES)
def test_check_gaussian_missing_m_step(gaussian_data, covariance_type):
    _, data, _, _ = gaussian_data
    family = Gaussian(covariance_type, missing_values=True)
    report = jaxmix.check.check_m_step(family, data, n_components=2, maximize_steps=20)
    assert report.ok, str(report)
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, report.params)
    assert jaxmix.check.check_fisher_identity(family, params, data).ok


def test_check_catches_missing_conditional_covariance(gaussian_data):
    """An M-step that completes the data but forgets Cov[x_m | x_o] is wrong."""
    _, data, _, _ = gaussian_data
    family = Gaussian("diag", missing_values=True)

    def m_step(X, resp, old):
        completed = np.where(np.isnan(X)[:, None], old.means[None], X[:, None])
        counts = resp.sum(0)
        means = np.einsum("nk,nkd->kd", resp, completed) / counts[:, None]
        variances = np.einsum("nk,nkd->kd", resp, (completed - means) ** 2)
        return {
            "weights": counts / counts.sum(),
            "means": means,
            "covariances": variances / counts[:, None],
        }

    report = jaxmix.check.check_m_step(
        family, data, m_step, n_components=2, maximize_steps=0
    )
    assert not report.ok
    assert report["covariances"].status == "not stationary"
    assert report["means"].ok


@pytest.mark.parametrize("kind", ["bernoulli", "poisson", "categorical"])
def test_check_discrete_missing(kind):
    rng = np.random.default_rng(2)
    family, X, _, _ = _discrete_case(kind, rng)
    data = _with_missing(X, rng)
    report = jaxmix.check.check_m_step(family, data, n_components=2, maximize_steps=0)
    assert report.ok, str(report)
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, report.params)
    assert jaxmix.check.check_fisher_identity(family, params, data).ok


# -- estimators ------------------------------------------------------------------
def test_gaussian_mixture_scores_observed_likelihood(gaussian_data):
    _, data, _, _ = gaussian_data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = jaxmix.GaussianMixture(
            2, covariance_type="full", random_state=0, allow_nan=True
        ).fit(data)
    assert np.all(np.isfinite(model.means_))
    params = (model.weights_, model.means_, model.covariances_)
    # The reference's mean log-likelihood is the observed-data one at params.
    global K
    saved, K = K, 2
    try:
        _, expected = _gaussian_step(data, *params, "full", 0.0)
    finally:
        K = saved
    np.testing.assert_allclose(model.score(data), expected, rtol=1e-10)
    proba = model.predict_proba(data)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(model.predict(data), proba.argmax(1))
    filled = model.impute(data)
    assert not np.isnan(filled).any()
    observed = ~np.isnan(data)
    np.testing.assert_array_equal(filled[observed], data[observed])


def test_bad_input():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 3))
    X[0, 1] = np.nan
    bad = X.copy()
    bad[7] = np.nan
    # Without allow_nan, NaN is an error (scikit-learn's rule).
    with pytest.raises(ValueError, match="NaN"):
        jaxmix.GaussianMixture(2).fit(X)
    with pytest.raises(ValueError, match="Row 7"):
        jaxmix.GaussianMixture(2, allow_nan=True).fit(bad)
    binary = np.where(np.isnan(bad), np.nan, bad > 0)
    with pytest.raises(ValueError, match="Row 7"):
        jaxmix.BernoulliMixture(2, allow_nan=True).fit(binary)
    bad = X.copy()
    bad[4, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        jaxmix.GaussianMixture(2, allow_nan=True).fit(bad)


def test_bernoulli_mixture_with_missing():
    rng = np.random.default_rng(4)
    X = (rng.random((80, 5)) < 0.4).astype(float)
    data = _with_missing(X[:, :D], rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = jaxmix.BernoulliMixture(2, random_state=0, allow_nan=True).fit(data)
    weights, means = model.weights_, model.means_
    global K
    saved, K = K, 2
    try:
        _, expected = _discrete_step("bernoulli", data, weights, means)
    finally:
        K = saved
    np.testing.assert_allclose(model.score(data), expected, rtol=1e-10)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_one_pass_statistics_equal_e_step_then_statistics(covariance_type):
    # Rows in increasing count of missing features, as the engine orders them,
    # over three sub-blocks of rows that condition at different sizes, some of
    # them with nothing observed, and sample weights with zeros.
    rng = np.random.default_rng(5)
    n, d = 1100, 6
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3.0
    counts = np.sort(rng.integers(0, d + 1, n))
    missing = np.argsort(rng.random((n, d)), axis=1) < counts[:, None]
    data = np.where(missing, np.nan, X)
    weights = np.where(rng.random(n) < 0.1, 0.0, rng.uniform(0.5, 2.0, n))
    family = Gaussian(covariance_type, missing_values=True)

    @jax.jit
    def both(params, data, weights):
        one_pass = family.posterior_statistics(params, data, weights)
        resp, log_norm = jaxmix.e_step(family, params, data)
        stats = family.statistics(params, data, resp * weights[:, None])
        return one_pass, (stats, jnp.sum(weights * log_norm))

    with jax.enable_x64(True):
        params = jaxmix.initialize(
            Gaussian(covariance_type), jax.random.key(0), jnp.asarray(X), K
        )
        got, expected = both(params, jnp.asarray(data), jnp.asarray(weights))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_blocks_keep_rows_in_increasing_count_of_missing_values():
    """Padding to whole blocks must not put incomplete rows out of order.

    Sub-blocks are conditioned at the size of their largest count of missing
    features, so the order is what keeps most of them small.
    """
    from jaxmix.engine.em import _blocks

    rng = np.random.default_rng(3)
    X = rng.normal(size=(11, 5)).astype(np.float32)
    counts = np.array([4, 0, 2, 1, 3, 0, 2, 1, 4, 0, 1])
    for row, count in enumerate(counts):
        X[row, rng.permutation(5)[:count]] = np.nan
    weights = np.arange(1.0, 12.0, dtype=np.float32)
    family = Gaussian("full", missing_values=True)
    blocks, block_weights = _blocks(
        family, jnp.asarray(X), jnp.asarray(weights), chunk_size=4, n_components=2
    )
    rows = np.asarray(blocks).reshape(-1, 5)
    flat_weights = np.asarray(block_weights).reshape(-1)
    assert rows.shape[0] == 12
    np.testing.assert_array_equal(np.diff(np.isnan(rows).sum(axis=1)) >= 0, True)
    padding = flat_weights == 0
    np.testing.assert_array_equal(padding, np.arange(12) < 1)
    np.testing.assert_array_equal(np.isnan(rows[padding]).sum(), 0)
    np.testing.assert_array_equal(np.sort(flat_weights[~padding]), weights)
    order = np.argsort(counts, kind="stable")
    np.testing.assert_array_equal(rows[~padding], X[order])
