"""The engine: identities, invariants, compile discipline, devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jaxmix
from jaxmix.engine import em
from jaxmix.families import Gaussian, GaussianParams

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
N, D, K = 40, 2, 3


@pytest.fixture(autouse=True)
def _float64(x64):
    yield


def _data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(K, D))
    return centres[rng.integers(K, size=N)] + rng.normal(size=(N, D))


def _start(family: Gaussian, X, seed: int) -> GaussianParams:
    return jaxmix.initialize(
        family, jax.random.key(seed), jnp.asarray(X), K, method="random_from_data"
    )


def _numpy_log_density(X, params, covariance_type):
    """float64 reference: log N(x | μ_k, Σ_k) with explicit inverses."""
    X, means = np.asarray(X), np.asarray(params.means)
    cov = np.asarray(params.covariances)
    out = np.empty((len(X), len(means)))
    for k, mean in enumerate(means):
        if covariance_type == "full":
            sigma = cov[k]
        elif covariance_type == "tied":
            sigma = cov
        elif covariance_type == "diag":
            sigma = np.diag(cov[k])
        else:
            sigma = cov[k] * np.eye(X.shape[1])
        diff = X - mean
        maha = np.einsum("nd,de,ne->n", diff, np.linalg.inv(sigma), diff)
        _, logdet = np.linalg.slogdet(sigma)
        out[:, k] = -0.5 * (X.shape[1] * np.log(2 * np.pi) + logdet + maha)
    return out


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_density_matches_numpy(covariance_type):
    family = Gaussian(covariance_type)
    X = _data(0)
    params = em.fit(family, jnp.asarray(X), _start(family, X, 0), max_iter=3).params
    ours = family.log_component_density(params, jnp.asarray(X))
    np.testing.assert_allclose(
        ours, _numpy_log_density(X, params, covariance_type), rtol=1e-10
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_matches_two_pass_numpy(covariance_type):
    family = Gaussian(covariance_type, reg_covar=1e-6)
    X = _data(1)
    resp = np.random.default_rng(1).dirichlet(np.ones(K), size=N)
    params = em.m_step(family, jnp.asarray(X), jnp.asarray(resp))
    counts = resp.sum(0) + 10 * np.finfo(float).eps
    means = resp.T @ X / counts[:, None]
    full = np.stack(
        [
            (resp[:, k, None] * (X - means[k])).T @ (X - means[k]) / counts[k]
            for k in range(K)
        ]
    )
    expected = {
        "full": full + 1e-6 * np.eye(D),
        "tied": np.einsum("k,kde->de", counts, full) / counts.sum() + 1e-6 * np.eye(D),
        "diag": np.diagonal(full, axis1=1, axis2=2) + 1e-6,
        "spherical": np.diagonal(full, axis1=1, axis2=2).mean(1) + 1e-6,
    }[covariance_type]
    np.testing.assert_allclose(params.weights, counts / counts.sum(), rtol=1e-12)
    np.testing.assert_allclose(params.means, means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(params.covariances, expected, rtol=1e-9)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), type_index=st.integers(0, 3))
def test_log_likelihood_never_decreases(seed, type_index):
    # Exact EM (reg_covar = 0: the ridge makes the M-step a near-maximiser only)
    # from a k-means start never decreases the log-likelihood. A component that
    # collapses onto too few points has an unbounded likelihood and ends the fit
    # as NONFINITE; those examples say nothing about monotonicity.
    with jax.enable_x64(True):
        covariance_type = COVARIANCE_TYPES[type_index]
        X = jnp.asarray(_data(seed))
        start = jaxmix.initialize(
            Gaussian(covariance_type), jax.random.key(seed), X, K, method="kmeans"
        )
        exact = Gaussian(covariance_type, reg_covar=0.0)
        result = em.fit(exact, X, start, max_iter=30, tol=-1.0)
        assume(int(result.status) != em.NONFINITE)
        trace = np.asarray(result.trace)
        assert int(result.n_iter) == 30 and np.all(np.isfinite(trace))
        steps = np.diff(trace)
        assert np.all(steps >= -1e-10 * np.abs(trace[1:])), steps.min()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), hard=st.booleans())
def test_responsibilities_sum_to_one(seed, hard):
    with jax.enable_x64(True):
        family = Gaussian("full")
        X = _data(seed)
        resp, log_norm = em.e_step(
            family, _start(family, X, seed), jnp.asarray(X), hard=hard
        )
        np.testing.assert_allclose(np.sum(resp, axis=1), 1.0, rtol=1e-12)
        assert np.all(np.asarray(resp) >= 0) and np.all(np.isfinite(log_norm))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_permuting_components_permutes_the_result(covariance_type):
    family = Gaussian(covariance_type)
    X = jnp.asarray(_data(3))
    start = _start(family, X, 3)
    order = jnp.array([2, 0, 1])
    permuted = start._replace(
        weights=start.weights[order],
        means=start.means[order],
        covariances=start.covariances
        if covariance_type == "tied"
        else start.covariances[order],
    )
    a = em.fit(family, X, start, max_iter=20, tol=-1.0)
    b = em.fit(family, X, permuted, max_iter=20, tol=-1.0)
    np.testing.assert_allclose(b.params.means, a.params.means[order], rtol=1e-9)
    np.testing.assert_allclose(b.params.weights, a.params.weights[order], rtol=1e-9)
    assert float(a.log_likelihood) == pytest.approx(float(b.log_likelihood), rel=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_blocks_give_the_same_fit(covariance_type):
    # Statistics are sums over samples: 40 rows in blocks of 7 (padded with
    # zero-weight rows) must give the fit of the whole.
    family = Gaussian(covariance_type)
    X = jnp.asarray(_data(4))
    start = _start(family, X, 4)
    whole = em.fit(family, X, start, max_iter=10, tol=-1.0)
    blocks = em.fit(family, X, start, max_iter=10, tol=-1.0, chunk_size=7)
    for a, b in zip(whole.params, blocks.params):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(whole.trace, blocks.trace, rtol=1e-12)


def test_zero_weights_remove_samples():
    family = Gaussian("full")
    X = _data(5)
    keep = np.arange(N) % 4 != 0
    start = _start(family, X[keep], 5)
    masked = em.fit(
        family,
        jnp.asarray(X),
        start,
        max_iter=10,
        tol=-1.0,
        sample_weight=jnp.asarray(keep, jnp.float64),
    )
    dropped = em.fit(family, jnp.asarray(X[keep]), start, max_iter=10, tol=-1.0)
    for a, b in zip(masked.params, dropped.params):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_vmap_over_data_sets_equals_one_by_one():
    family = Gaussian("diag")
    Xs = jnp.stack([jnp.asarray(_data(s)) for s in range(4)])
    starts = jax.vmap(
        lambda X, k: jaxmix.initialize(family, k, X, K, method="random_from_data")
    )(Xs, jax.random.split(jax.random.key(0), 4))
    batched = jax.vmap(lambda X, p: em.fit(family, X, p, max_iter=50))(Xs, starts)
    for b in range(4):
        start = jax.tree.map(lambda a, b=b: a[b], starts)
        single = em.fit(family, Xs[b], start, max_iter=50)
        assert int(single.n_iter) == int(batched.n_iter[b])
        np.testing.assert_allclose(
            single.params.means, batched.params.means[b], rtol=1e-10
        )


def test_no_recompilation_for_new_values():
    X = jnp.asarray(_data(6))
    family = Gaussian("spherical", reg_covar=1e-6)
    start = _start(family, X, 6)
    em.fit(family, X, start, max_iter=25, tol=1e-3)
    before = em._fit_jit._cache_size()
    em.fit(family, X + 1.0, start, max_iter=25, tol=1e-5)  # new data, new tol
    em.fit(Gaussian("spherical", reg_covar=1e-2), X, start, max_iter=25)  # reg_covar
    em.fit(family, X, start._replace(means=start.means * 2), max_iter=25)  # new start
    assert em._fit_jit._cache_size() == before


def test_max_iter_zero_returns_the_start():
    family = Gaussian("full")
    X = jnp.asarray(_data(7))
    start = _start(family, X, 7)
    result = em.fit(family, X, start, max_iter=0)
    assert int(result.n_iter) == 0 and int(result.status) == em.MAX_ITER
    # equal up to the round trip to the data-centred coordinates
    np.testing.assert_allclose(result.params.means, start.means, rtol=1e-14)


def test_non_finite_is_never_converged_and_keeps_finite_params():
    # Without regularisation a component on repeated points becomes singular.
    X = jnp.asarray(np.r_[np.zeros((6, 2)), _data(8)])
    family = Gaussian("full", reg_covar=0.0)
    start = GaussianParams(
        jnp.array([0.5, 0.5]),
        jnp.array([[0.0, 0.0], [3.0, 3.0]]),
        jnp.stack([jnp.eye(2)] * 2),
    )
    result = em.fit(family, X, start, max_iter=50)
    assert int(result.status) == em.NONFINITE
    assert not bool(result.converged)
    for leaf in result.params:
        assert np.all(np.isfinite(leaf))


def test_sharded_data_gives_the_same_fit():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import jaxmix
        assert jax.device_count() == 4
        with jax.enable_x64(True):
            rng = np.random.default_rng(0)
            X = np.r_[rng.normal(0, 1, (500, 3)), rng.normal(4, 1, (500, 3))]
            family = jaxmix.families.Gaussian("full")
            start = jaxmix.initialize(family, jax.random.key(0), jnp.asarray(X), 2)
            local = jaxmix.fit(family, jnp.asarray(X), start, max_iter=20, tol=-1.0,
                               chunk_size=128)
            mesh = Mesh(np.array(jax.devices()), ("data",))
            Xs = jax.device_put(X, NamedSharding(mesh, P("data", None)))
            sharded = jaxmix.fit(family, Xs, start, max_iter=20, tol=-1.0,
                                 chunk_size=128)
            for a, b in zip(local.params, sharded.params):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
            print("OK", len(Xs.sharding.device_set))
        """
    )
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK 4" in out.stdout
