"""Generalized EM (an M-step by optimiser steps) against closed forms and scipy.

The references are independent of the generalized M-step: the Gaussian
family's closed-form M-step (the same model with its ``m_step`` switched off
must reach the same fixed point), scipy's maximum-likelihood gamma fit, and
the identities every EM variant keeps (monotone objective, blocks and
batches that change nothing, integer weights equal repeated rows).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import jaxmix
from jaxmix.engine import em, generalized
from jaxmix.engine.generalized import GeneralizedMStep
from jaxmix.families import Gamma, GammaParams, Gaussian
from jaxmix.families.base import Family

# One data shape, one K and one max_iter for the gamma fits: few compilations.
N, D, K = 200, 2, 2
MAX_ITER = 200


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


class GaussianByGEM(Gaussian):
    """The Gaussian family with its closed-form M-step switched off."""

    closed_form_m_step = False


def gamma_data(seed=0, n_samples=N):
    """Two gamma components, shapes 2 and 20, means 2 and 10."""
    rng = np.random.default_rng(seed)
    first = rng.gamma(2.0, 1.0, size=(n_samples * 3 // 5, D))
    second = rng.gamma(20.0, 0.5, size=(n_samples - len(first), D))
    return np.concatenate([first, second])


def gamma_start(X):
    """Moment-matching start on the split of the data at its median."""
    labels = (X[:, 0] > np.median(X[:, 0])).astype(int)
    resp = jax.nn.one_hot(labels, K, dtype=jnp.float64)
    return Gamma().reference(jnp.asarray(X), resp)


def fit_gamma(X, start, **kwargs):
    return jaxmix.fit(
        Gamma(), jnp.asarray(X), start, max_iter=MAX_ITER, tol=1e-13, **kwargs
    )


@pytest.mark.parametrize("covariance_type", ["tied"])
def test_gaussian_without_its_m_step_reaches_the_closed_form_fit(covariance_type):
    # The fixed point of EM is where Q's maximiser is the current θ; GEM stops
    # only there too. A wrong gradient, chart or weights update would stop
    # elsewhere.
    rng = np.random.default_rng(1)
    X = jnp.asarray(
        np.r_[rng.normal(size=(120, 2)), rng.normal(size=(80, 2)) * 0.5 + 3]
    )
    closed = Gaussian(covariance_type, reg_covar=0.0)
    gem = GaussianByGEM(covariance_type, reg_covar=0.0)
    assert closed.closed_form_m_step and not gem.closed_form_m_step
    start = jaxmix.initialize(closed, jax.random.key(0), X, 2)
    exact = jaxmix.fit(closed, X, start, max_iter=1000, tol=1e-14)
    result = jaxmix.fit(gem, X, start, max_iter=1000, tol=1e-14)
    assert bool(result.converged) and bool(exact.converged)
    for name, a, b in zip(exact.params._fields, exact.params, result.params):
        np.testing.assert_allclose(b, a, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(result.log_likelihood, exact.log_likelihood, rtol=1e-10)


def test_gamma_with_one_component_is_scipys_maximum_likelihood_fit():
    X = np.random.default_rng(3).gamma(2.5, 1 / 1.7, size=(N, D)) * [1.0, 40.0]
    start = Gamma().reference(jnp.asarray(X), jnp.ones((N, 1)))
    result = jaxmix.fit(Gamma(), jnp.asarray(X), start, max_iter=MAX_ITER, tol=1e-13)
    assert bool(result.converged)
    for d in range(D):
        shape, _, scale = stats.gamma.fit(X[:, d], floc=0)
        np.testing.assert_allclose(result.params.shapes[0, d], shape, rtol=1e-6)
        np.testing.assert_allclose(result.params.rates[0, d], 1 / scale, rtol=1e-6)
    # The objective is the mean log-likelihood under scipy's density.
    expected = stats.gamma.logpdf(
        X, result.params.shapes[0], scale=1 / result.params.rates[0]
    )
    np.testing.assert_allclose(
        result.trace[int(result.n_iter) - 1], expected.sum(1).mean(), rtol=1e-10
    )


def test_gamma_mixture_log_likelihood_is_scipys():
    X = gamma_data()
    result = fit_gamma(X, gamma_start(X))
    p = result.params
    # The reported objective is at the parameters before the last M-step; at
    # convergence (tol 1e-13) the two agree to round-off.
    per_component = np.stack(
        [
            np.log(p.weights[k])
            + stats.gamma.logpdf(X, p.shapes[k], scale=1 / p.rates[k]).sum(1)
            for k in range(K)
        ]
    )
    expected = np.mean(np.logaddexp(*per_component))
    np.testing.assert_allclose(result.log_likelihood, expected, rtol=1e-10)
    # The recovered components (sorted by mean) are near the truth.
    order = np.argsort(p.means[:, 0])
    np.testing.assert_allclose(p.means[order].mean(1), [2.0, 10.0], rtol=0.2)


@settings(max_examples=4, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16))
def test_gem_never_lowers_the_objective(seed):
    X = gamma_data(seed)
    result = fit_gamma(X, gamma_start(X))
    trace = np.asarray(result.trace)[: int(result.n_iter)]
    assert np.all(np.isfinite(trace))
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))


def test_blocks_and_batches_change_nothing():
    X = gamma_data()
    starts = [gamma_start(X)]
    alt = gamma_start(X[::-1])
    starts.append(alt._replace(weights=jnp.array([0.3, 0.7])))
    one_by_one = [fit_gamma(X, s) for s in starts]
    batched = jax.vmap(lambda s: fit_gamma(X, s))(
        jax.tree.map(lambda *leaves: jnp.stack(leaves), *starts)
    )
    blocked = fit_gamma(X, starts[0], chunk_size=48)  # 48 does not divide 200
    # Batched and blocked programs sum in another order; the line searches
    # follow that round-off, so the fits meet at the fixed point within the
    # slack of the stopping rule (tol 1e-13 on the objective, ~1e-7 on a
    # shape, which the objective barely feels), not bit for bit.
    for i, single in enumerate(one_by_one):
        for a, b in zip(single.params, batched.params):
            np.testing.assert_allclose(b[i], a, rtol=1e-6)
        np.testing.assert_allclose(
            batched.log_likelihood[i], single.log_likelihood, rtol=1e-12
        )
    for a, b in zip(one_by_one[0].params, blocked.params):
        np.testing.assert_allclose(b, a, rtol=1e-6)


def test_integer_weights_equal_repeated_rows():
    X = gamma_data(5)
    # Rows 0-49 twice, rows 50-99 left out, rows 100-199 once: 200 rows each way.
    weights = np.r_[np.full(50, 2.0), np.zeros(50), np.ones(100)]
    repeated = np.r_[X[:50], X[:50], X[100:]]
    start = gamma_start(X)
    a = fit_gamma(X, start, sample_weight=jnp.asarray(weights))
    b = fit_gamma(repeated, start, sample_weight=jnp.ones(N))
    # Both stop at the same fixed point within the stopping rule's slack
    # (tol 1e-13 on the objective is ~1e-7 on a shape).
    for u, v in zip(a.params, b.params):
        np.testing.assert_allclose(u, v, rtol=1e-6)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-10)


def test_a_step_that_lowers_q_is_not_taken():
    X = jnp.asarray(gamma_data())
    start = gamma_start(np.asarray(X))
    resp, _ = em.e_step(Gamma(), start, X)
    scale = jaxmix.families.charts.data_scale(X)
    # Gradient ascent on −Q: every step lowers Q, so none may be taken.
    uphill = Gamma(generalized_m_step=GeneralizedMStep(3, optax.sgd(-1.0)))
    kept = generalized.maximize(uphill, start, X, resp, scale)
    np.testing.assert_array_equal(kept.shapes, start.shapes)
    np.testing.assert_array_equal(kept.means, start.means)
    # The weights still take their closed form, N_k / N.
    np.testing.assert_allclose(kept.weights, resp.sum(0) / N, rtol=1e-14)

    # The default (L-BFGS) raises Q.
    def q(p):
        return float(generalized.expected_log_density(Gamma(), p, X, resp))

    moved = generalized.maximize(Gamma(), start, X, resp, scale)
    assert q(moved) > q(start)


def test_hard_gem_equals_hard_closed_form_em():
    rng = np.random.default_rng(2)
    X = jnp.asarray(np.r_[rng.normal(size=(60, 2)), rng.normal(size=(40, 2)) + 4])
    closed = Gaussian("diag", reg_covar=0.0)
    start = jaxmix.initialize(closed, jax.random.key(1), X, 2)
    exact = jaxmix.fit(closed, X, start, max_iter=100, tol=1e-14, hard=True)
    result = jaxmix.fit(
        GaussianByGEM("diag", reg_covar=0.0),
        X,
        start,
        max_iter=100,
        tol=1e-14,
        hard=True,
    )
    for a, b in zip(exact.params, result.params):
        np.testing.assert_allclose(b, a, atol=1e-7)


@pytest.mark.parametrize("steps, stationary", [(1, False), (10, True)])
def test_the_checker_reports_how_close_to_stationary_a_gem_step_is(steps, stationary):
    X = gamma_data(7)[:100]
    family = Gamma(generalized_m_step=GeneralizedMStep(steps))
    report = jaxmix.check.check_m_step(family, X, n_components=K, maximize_steps=0)
    assert report.ok == stationary
    gap = report.fields["shapes"].relative_gap
    assert (gap <= 1e-6) == stationary, str(report)


def test_a_family_without_a_start_says_so():
    class Bare(Gamma):
        def reference(self, X, resp):
            return Family.reference(self, X, resp)

    with pytest.raises(NotImplementedError, match="reference"):
        Bare().reference(jnp.ones((3, 1)), jnp.ones((3, 1)))


def test_gamma_rejects_data_outside_its_support():
    with pytest.raises(ValueError, match="positive"):
        Gamma().check_data(np.array([[1.0], [0.0]]))
    with pytest.raises(ValueError, match="finite"):
        Gamma().check_data(np.array([[1.0], [np.nan]]))


def test_sharded_data_gives_the_same_gem_fit():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import jaxmix
        assert jax.device_count() == 2
        with jax.enable_x64(True):
            rng = np.random.default_rng(0)
            X = np.r_[rng.gamma(2.0, 1.0, (300, 2)), rng.gamma(20.0, 0.5, (200, 2))]
            family = jaxmix.families.Gamma()
            start = jaxmix.initialize(family, jax.random.key(0), jnp.asarray(X), 2)
            local = jaxmix.fit(family, jnp.asarray(X), start, max_iter=200,
                               tol=1e-13, chunk_size=128)
            mesh = Mesh(np.array(jax.devices()), ("data",))
            Xs = jax.device_put(X, NamedSharding(mesh, P("data", None)))
            sharded = jaxmix.fit(family, Xs, start, max_iter=200, tol=1e-13,
                                 chunk_size=128)
            # Sums over devices round differently, and the line searches
            # follow the round-off; at the fixed point the fits agree, to
            # what an objective converged to 1e-13 pins down (about its
            # square root; 1.1e-7 was seen on an AVX2 CPU).
            assert bool(local.converged) and bool(sharded.converged)
            for a, b in zip(local.params, sharded.params):
                np.testing.assert_allclose(a, b, rtol=1e-6)
            print("OK", len(Xs.sharding.device_set))
        """
    )
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
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
    assert "OK 2" in out.stdout


def test_gamma_params_rates_are_shape_over_mean():
    p = GammaParams(jnp.ones(1), jnp.array([[3.0]]), jnp.array([[1.5]]))
    np.testing.assert_allclose(p.rates, [[2.0]])
