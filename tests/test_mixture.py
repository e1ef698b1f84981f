"""Mixture algebra against float64 numpy references, Monte Carlo and Bayes' rule."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmix import mixture
from jaxmix.families import Gaussian, GaussianParams

TYPES = ("full", "tied", "diag", "spherical")
N_MC = 20_000  # one sample size for every Monte Carlo test: one compilation per type
N_SE = 5.0  # Monte Carlo tolerance in standard errors


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


def make_params(covariance_type, n_components=3, n_features=3, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_components, 3.0))
    means = rng.normal(scale=scale, size=(n_components, n_features))
    eye = np.eye(n_features)
    if covariance_type == "full":
        A = rng.normal(size=(n_components, n_features, n_features))
        covariances = A @ np.swapaxes(A, -1, -2) / n_features + 0.3 * eye
    elif covariance_type == "tied":
        A = rng.normal(size=(n_features, n_features))
        covariances = A @ A.T / n_features + 0.3 * eye
    elif covariance_type == "diag":
        covariances = rng.uniform(0.3, 2.0, (n_components, n_features))
    else:
        covariances = rng.uniform(0.3, 2.0, n_components)
    return GaussianParams(*(jnp.asarray(x) for x in (weights, means, covariances)))


def full_numpy(params, covariance_type):
    """(weights, means, (K, D, D) covariances) as float64 numpy arrays."""
    weights, means, cov = (np.asarray(x, np.float64) for x in params)
    n_components, n_features = means.shape
    if covariance_type == "full":
        full = cov
    elif covariance_type == "tied":
        full = np.repeat(cov[None], n_components, axis=0)
    elif covariance_type == "diag":
        full = np.stack([np.diag(c) for c in cov])
    else:
        full = np.stack([c * np.eye(n_features) for c in cov])
    return weights, means, full


def gaussian_pdf(X, mean, cov):
    """Textbook multivariate normal density, rows of X, float64."""
    diff = np.atleast_2d(X) - mean
    quad = np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff)
    norm = np.sqrt((2 * np.pi) ** len(mean) * np.linalg.det(cov))
    return np.exp(-0.5 * quad) / norm


def mixture_pdf(X, weights, means, covs):
    return sum(
        w * gaussian_pdf(X, m, c) for w, m, c in zip(weights, means, covs, strict=True)
    )


def raw_moments(weights, means, covs):
    """E[x] and Σ π_k (Σ_k + μ_k μ_kᵀ) − E[x]E[x]ᵀ in float64 (uncentred form)."""
    m = weights @ means
    second = np.einsum("k,kde->de", weights, covs + means[:, :, None] * means[:, None])
    return m, second - np.outer(m, m)


def assert_within_standard_errors(samples, expected_mean, expected_cov):
    """Sample mean and covariance within N_SE standard errors of the expectations."""
    n = samples.shape[0]
    centred = samples - samples.mean(axis=0)
    se_mean = samples.std(axis=0) / np.sqrt(n)
    np.testing.assert_array_less(
        np.abs(samples.mean(axis=0) - expected_mean), N_SE * se_mean
    )
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(axis=0) / np.sqrt(n)
    np.testing.assert_array_less(
        np.abs(products.mean(axis=0) - expected_cov), N_SE * se_cov
    )


# ----------------------------------------------------------------------------
# Moments
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", TYPES)
def test_moments_match_uncentred_formula(covariance_type):
    params = make_params(covariance_type)
    expected_mean, expected_cov = raw_moments(*full_numpy(params, covariance_type))
    family = Gaussian(covariance_type)  # a family is accepted in place of the name
    np.testing.assert_allclose(mixture.mean(params, family), expected_mean, rtol=1e-12)
    np.testing.assert_allclose(
        mixture.covariance(params, covariance_type), expected_cov, rtol=1e-10
    )


@pytest.mark.parametrize("covariance_type", TYPES)
def test_single_component_moments_are_its_parameters(covariance_type):
    params = make_params(covariance_type, n_components=1, seed=1)
    _, means, covs = full_numpy(params, covariance_type)
    np.testing.assert_allclose(mixture.mean(params, covariance_type), means[0])
    np.testing.assert_allclose(
        mixture.covariance(params, covariance_type), covs[0], rtol=1e-12
    )


def test_covariance_is_accurate_in_float32_far_from_zero():
    # Means near 1e4: the raw second moment is ~1e8, so its float32 rounding
    # (~8 per entry) would swamp covariances of order one.
    params64 = make_params("full", seed=2, scale=1.0)
    params64 = params64._replace(means=params64.means + 1e4)
    params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params64)
    _, expected = raw_moments(*full_numpy(params64, "full"))
    got = mixture.covariance(params32, "full")
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, atol=2e-3 * np.abs(expected).max())


def test_bernoulli_moments_match_exact_enumeration():
    rng = np.random.default_rng(3)
    weights = rng.dirichlet(np.ones(3))
    means = rng.uniform(0.05, 0.95, (3, 4))
    # Every binary vector with its exact mixture probability.
    X = np.array(list(itertools.product([0.0, 1.0], repeat=4)))
    per_component = np.prod(
        np.where(X[:, None, :] == 1, means[None], 1 - means[None]), axis=-1
    )
    prob = per_component @ weights
    expected_mean = prob @ X
    centred = X - expected_mean
    expected_cov = np.einsum("n,nd,ne->de", prob, centred, centred)
    np.testing.assert_allclose(
        mixture.bernoulli_mean(jnp.asarray(weights), jnp.asarray(means)),
        expected_mean,
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        mixture.bernoulli_covariance(jnp.asarray(weights), jnp.asarray(means)),
        expected_cov,
        atol=1e-14,
    )


def test_bernoulli_sample_moments_monte_carlo():
    rng = np.random.default_rng(4)
    weights = jnp.asarray(rng.dirichlet(np.ones(3)))
    means = jnp.asarray(rng.uniform(0.05, 0.95, (3, 4)))
    X, labels = mixture.bernoulli_sample(jax.random.key(0), weights, means, N_MC)
    X = np.asarray(X)
    assert set(np.unique(X)) <= {0.0, 1.0}
    assert_within_standard_errors(
        X,
        mixture.bernoulli_mean(weights, means),
        mixture.bernoulli_covariance(weights, means),
    )
    # Labels say which component generated each sample.
    for k in range(3):
        rows = X[np.asarray(labels) == k]
        se = np.sqrt(means[k] * (1 - means[k]) / len(rows))
        np.testing.assert_array_less(np.abs(rows.mean(0) - means[k]), N_SE * se)


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", TYPES)
def test_sample_monte_carlo(covariance_type):
    params = make_params(covariance_type, seed=5)
    weights, means, covs = full_numpy(params, covariance_type)
    X, labels = mixture.sample(jax.random.key(1), params, covariance_type, N_MC)
    X, labels = np.asarray(X), np.asarray(labels)
    assert X.shape == (N_MC, 3) and X.dtype == np.float64
    expected_mean, expected_cov = raw_moments(weights, means, covs)
    assert_within_standard_errors(X, expected_mean, expected_cov)
    frequencies = np.bincount(labels, minlength=3) / N_MC
    se = np.sqrt(weights * (1 - weights) / N_MC)
    np.testing.assert_array_less(np.abs(frequencies - weights), N_SE * se)
    # Each label's samples come from that component.
    for k in range(3):
        assert_within_standard_errors(X[labels == k], means[k], covs[k])


def test_sample_is_jittable_and_deterministic_given_the_key():
    params = make_params("diag", seed=5)
    draw = jax.jit(lambda key, p: mixture.sample(key, p, "diag", N_MC))
    first = draw(jax.random.key(3), params)
    again = mixture.sample(jax.random.key(3), params, "diag", N_MC)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


# ----------------------------------------------------------------------------
# Sums and affine maps
# ----------------------------------------------------------------------------


def expected_sum_type(type_x, type_y):
    pair = {type_x, type_y}
    if pair == {"spherical"}:
        return "spherical"
    if pair <= {"diag", "spherical"}:
        return "diag"
    return "tied" if pair == {"tied"} else "full"


@pytest.mark.parametrize("type_x, type_y", list(itertools.product(TYPES, TYPES)))
def test_add_matches_pairwise_reference(type_x, type_y):
    x = make_params(type_x, n_components=2, seed=6)
    y = make_params(type_y, n_components=3, seed=7)
    total, total_type = mixture.add(x, type_x, y, type_y)
    assert total_type == expected_sum_type(type_x, type_y)
    wx, mx, cx = full_numpy(x, type_x)
    wy, my, cy = full_numpy(y, type_y)
    pairs = list(itertools.product(range(2), range(3)))
    weights, means, covs = full_numpy(total, total_type)
    np.testing.assert_allclose(weights, [wx[k] * wy[j] for k, j in pairs])
    np.testing.assert_allclose(means, [mx[k] + my[j] for k, j in pairs])
    np.testing.assert_allclose(covs, [cx[k] + cy[j] for k, j in pairs])
    # Independence: moments of x + y are sums of moments.
    np.testing.assert_allclose(
        mixture.covariance(total, total_type),
        mixture.covariance(x, type_x) + mixture.covariance(y, type_y),
        rtol=1e-10,
    )


def test_add_monte_carlo():
    x = make_params("full", n_components=2, seed=8)
    y = make_params("diag", n_components=3, seed=9)
    key_x, key_y = jax.random.split(jax.random.key(2))
    samples = np.asarray(mixture.sample(key_x, x, "full", N_MC)[0]) + np.asarray(
        mixture.sample(key_y, y, "diag", N_MC)[0]
    )
    total, total_type = mixture.add(x, "full", y, "diag")
    assert_within_standard_errors(
        samples, mixture.mean(total, total_type), mixture.covariance(total, total_type)
    )


def test_add_density_is_the_convolution_of_densities():
    # In one dimension the density of x + y is p_x * p_y, computed here on a grid.
    x = make_params("spherical", n_components=2, n_features=1, seed=10)
    y = make_params("diag", n_components=3, n_features=1, seed=11)
    step, half_width = 0.02, 20.0
    grid = np.arange(-half_width, half_width + step / 2, step)[:, None]
    p_x = mixture_pdf(grid, *full_numpy(x, "spherical"))
    p_y = mixture_pdf(grid, *full_numpy(y, "diag"))
    convolved = np.convolve(p_x, p_y) * step
    sums = 2 * grid[0, 0] + step * np.arange(len(convolved))[:, None]
    total, total_type = mixture.add(x, "spherical", y, "diag")
    np.testing.assert_allclose(
        mixture_pdf(sums, *full_numpy(total, total_type)), convolved, atol=1e-10
    )


@pytest.mark.parametrize("covariance_type", TYPES)
def test_affine_matches_reference(covariance_type):
    params = make_params(covariance_type, seed=12)
    weights, means, covs = full_numpy(params, covariance_type)
    rng = np.random.default_rng(13)
    maps = {
        0: (np.float64(-1.7), 0.5),
        1: (rng.normal(size=3), rng.normal(size=3)),
        2: (rng.normal(size=(2, 3)), rng.normal(size=2)),
    }
    for ndim, (A, b) in maps.items():
        image, image_type = mixture.affine(params, covariance_type, A, b)
        matrix = A * np.eye(3) if ndim < 2 else A
        got_weights, got_means, got_covs = full_numpy(image, image_type)
        np.testing.assert_allclose(got_weights, weights)
        np.testing.assert_allclose(got_means, means @ matrix.T + b, rtol=1e-12)
        np.testing.assert_allclose(got_covs, matrix @ covs @ matrix.T, rtol=1e-10)
        if ndim == 2:
            assert image_type == ("tied" if covariance_type == "tied" else "full")
        elif ndim == 1 and covariance_type == "spherical":
            assert image_type == "diag"
        else:
            assert image_type == covariance_type
        np.testing.assert_allclose(
            mixture.covariance(image, image_type),
            matrix @ mixture.covariance(params, covariance_type) @ matrix.T,
            rtol=1e-10,
        )


# ----------------------------------------------------------------------------
# Marginals and conditionals
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", TYPES)
def test_marginal_selects_mean_entries_and_covariance_block(covariance_type):
    params = make_params(covariance_type, n_features=4, seed=14)
    weights, means, covs = full_numpy(params, covariance_type)
    keep = [3, 1]
    got = full_numpy(mixture.marginal(params, covariance_type, keep), covariance_type)
    np.testing.assert_allclose(got[0], weights)
    np.testing.assert_allclose(got[1], means[:, keep])
    np.testing.assert_allclose(got[2], covs[:, keep][:, :, keep])


def test_condition_single_gaussian_textbook_formula():
    params = make_params("full", n_components=1, n_features=4, seed=15)
    _, means, covs = full_numpy(params, "full")
    mu, cov = means[0], covs[0]
    o, u = [3, 1], [0, 2]
    x_o = np.array([0.7, -1.2])
    gain = cov[np.ix_(u, o)] @ np.linalg.inv(cov[np.ix_(o, o)])
    expected_mean = mu[u] + gain @ (x_o - mu[o])
    expected_cov = cov[np.ix_(u, u)] - gain @ cov[np.ix_(o, u)]
    got = mixture.condition(params, "full", o, x_o)
    np.testing.assert_allclose(got.weights, [1.0])
    np.testing.assert_allclose(got.means[0], expected_mean, rtol=1e-10)
    np.testing.assert_allclose(got.covariances[0], expected_cov, rtol=1e-10)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_condition_mixture_matches_bayes_rule_on_a_grid(covariance_type):
    # p(x_0, x_2 | x_1 = a) = p(x_0, a, x_2) / ∫∫ p(x_0, a, x_2), evaluated on a
    # grid from the joint density alone; the posterior weight of component k is
    # its share of that integral.
    params = make_params(covariance_type, seed=16, scale=1.5)
    weights, means, covs = full_numpy(params, covariance_type)
    observed_value = 0.4
    step = 0.05
    axis = np.arange(-10.0, 10.0 + step / 2, step)
    x0, x2 = np.meshgrid(axis, axis, indexing="ij")
    points = np.stack([x0.ravel(), np.full(x0.size, observed_value), x2.ravel()], 1)
    joint = np.stack(
        [
            w * gaussian_pdf(points, m, c)
            for w, m, c in zip(weights, means, covs, strict=True)
        ]
    )
    evidence = joint.sum() * step**2
    expected_density = joint.sum(axis=0) / evidence
    expected_weights = joint.sum(axis=1) * step**2 / evidence

    conditional = mixture.condition(params, covariance_type, [1], [observed_value])
    got = full_numpy(conditional, covariance_type)
    np.testing.assert_allclose(got[0], expected_weights, atol=1e-9)
    np.testing.assert_allclose(
        mixture_pdf(points[:, [0, 2]], *got), expected_density, atol=1e-9
    )


@pytest.mark.parametrize("covariance_type", TYPES)
def test_condition_batch_agrees_with_single_rows(covariance_type):
    params = make_params(covariance_type, n_features=4, seed=17)
    values = np.random.default_rng(18).normal(size=(5, 2))
    batched = mixture.condition(params, covariance_type, [2, 0], values)
    for row, value in enumerate(values):
        single = mixture.condition(params, covariance_type, [2, 0], value)
        for got, want in zip(batched, single, strict=True):
            np.testing.assert_allclose(got[row], want, rtol=1e-12)


def test_condition_on_nothing_gives_the_mixture():
    params = make_params("diag", seed=19)
    conditional = mixture.condition(params, "diag", [], np.zeros(0))
    for got, want in zip(conditional, params, strict=True):
        np.testing.assert_allclose(got, want)


def impute_reference(params, covariance_type, X):
    """Row by row: Bayes weights and textbook conditional means, float64 numpy."""
    weights, means, covs = full_numpy(params, covariance_type)
    out = X.copy()
    for row in out:
        u = np.flatnonzero(np.isnan(row))
        o = np.flatnonzero(~np.isnan(row))
        if len(o) == 0:
            row[:] = weights @ means
            continue
        posterior, conditional_means = [], []
        for w, m, c in zip(weights, means, covs, strict=True):
            posterior.append(w * gaussian_pdf(row[o], m[o], c[np.ix_(o, o)])[0])
            gain = c[np.ix_(u, o)] @ np.linalg.inv(c[np.ix_(o, o)])
            conditional_means.append(m[u] + gain @ (row[o] - m[o]))
        posterior = np.array(posterior) / np.sum(posterior)
        row[u] = posterior @ np.array(conditional_means)
    return out


@pytest.mark.parametrize("covariance_type", TYPES)
def test_impute_matches_row_by_row_reference(covariance_type):
    params = make_params(covariance_type, n_features=4, seed=20)
    rng = np.random.default_rng(21)
    X = rng.normal(scale=2.0, size=(12, 4))
    X[rng.uniform(size=X.shape) < 0.4] = np.nan
    X[0] = np.nan  # nothing observed
    X[1] = rng.normal(size=4)  # complete
    X[2, [0, 3]] = np.nan  # a pattern shared by several rows
    X[3, [0, 3]] = np.nan
    X[3, [1, 2]] = [0.5, -0.5]
    got = mixture.impute(params, covariance_type, X)
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got[~np.isnan(X)], X[~np.isnan(X)])
    np.testing.assert_allclose(
        got, impute_reference(params, covariance_type, X), rtol=1e-9, atol=1e-12
    )


def test_functions_work_under_vmap():
    batch = [make_params("diag", seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *batch)
    covariances = jax.vmap(lambda p: mixture.covariance(p, "diag"))(stacked)
    for got, params in zip(covariances, batch, strict=True):
        np.testing.assert_allclose(got, mixture.covariance(params, "diag"))


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_bad_input_raises_value_error():
    params = make_params("full", seed=22)
    with pytest.raises(ValueError, match="covariance_type"):
        mixture.mean(params, "banana")
    with pytest.raises(ValueError, match="shape"):
        mixture.covariance(params, "diag")
    with pytest.raises(ValueError, match="same number of features"):
        mixture.add(params, "full", make_params("full", n_features=2), "full")
    with pytest.raises(ValueError, match="A must"):
        mixture.affine(params, "full", np.ones((2, 4)))
    with pytest.raises(ValueError, match="b must"):
        mixture.affine(params, "full", np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="n_samples"):
        mixture.sample(jax.random.key(0), params, "full", 0)
    with pytest.raises(ValueError, match="indices"):
        mixture.marginal(params, "full", [0, 3])
    with pytest.raises(ValueError, match="repeat"):
        mixture.marginal(params, "full", [1, 1])
    with pytest.raises(ValueError, match="unobserved"):
        mixture.condition(params, "full", [0, 1, 2], np.zeros(3))
    with pytest.raises(ValueError, match="observed_values"):
        mixture.condition(params, "full", [0], np.zeros(2))
    with pytest.raises(ValueError, match="infinity"):
        mixture.impute(params, "full", np.array([[np.inf, 0.0, np.nan]]))
    with pytest.raises(ValueError, match="shape"):
        mixture.impute(params, "full", np.zeros((2, 4)))
    with pytest.raises(ValueError, match="shapes"):
        mixture.bernoulli_mean(np.ones(2), np.ones((3, 2)))
