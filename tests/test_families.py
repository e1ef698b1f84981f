"""Conformance: every family goes through the protocol and through jaxmix.check.

A new family is one module, one export and one line in ``CASES``. Each case is
run through the protocol's own promises (pytree round trip, statistics that add
up over blocks, the neutral statistics, hard statistics equal to statistics of
one-hot responsibilities, charts of real fields, a parameter count), through
every autodiff check of :mod:`jaxmix.check` (its own M-step must pass, its
E-step and Fisher's identity hold, a fit's objective never decreases), through
the drivers (restarts, many fits, the component sweep, gradient fitting), and
through a trace counter: new data of the same shape must not recompile.

The data shapes match tests/test_check.py, so the checks compile once per
family structure across the two files.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmix
from jaxmix import check
from jaxmix.engine import em
from jaxmix.engine.generalized import GeneralizedMStep
from jaxmix.families import (
    Bernoulli,
    Categorical,
    FactorAnalyzer,
    Gamma,
    Gaussian,
    IsotropicGaussian,
    Laplace,
    Poisson,
    StudentT,
    VonMisesFisher,
)
from jaxmix.families.base import Family

N, K = 120, 3


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


def gaussian_data(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    scales = np.array([[1.0, 0.5], [0.5, 0.5], [0.7, 1.2]])
    X = centres[:, None] + scales[:, None] * rng.normal(size=(3, N // 3, 2))
    return X.reshape(-1, 2)


def binary_data(seed=1):
    """Binary data; feature 0 is always 0 and feature 1 always 1 (ML means 0, 1)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.choice([0.1, 0.5, 0.9], size=(3, 6))
    prototypes[:, 0], prototypes[:, 1] = 0.0, 1.0
    labels = rng.choice(3, size=N)
    return (rng.random((N, 6)) < prototypes[labels]).astype(np.float64)


def sphere_data(seed=0):
    """Unit vectors in three clusters on the sphere S² (Gaussian data lifted)."""
    X = np.c_[gaussian_data(seed), np.ones(N)]
    return X / np.linalg.norm(X, axis=1, keepdims=True)


X, XB = gaussian_data(), binary_data()


class Case(NamedTuple):
    id: str
    family: Any
    data: Any  # a function of the seed returning float64 (N, D) data
    steps: int = 0  # L-BFGS steps of the M-step check (as in test_check.py)
    drivers: bool = False  # also run through the drivers (one case per class)


def _map_gaussian(kind, psi):
    return Gaussian(
        kind,
        weight_concentration=2.0,
        mean_prior=np.ones(2),
        mean_precision=0.5,
        degrees_of_freedom=3.0,
        covariance_prior=psi,
    )


PSI = np.array([[1.0, 0.2], [0.2, 0.5]])


def factor_data(seed=0):
    """The Gaussian clusters mapped to six features (two factors), plus noise."""
    mixing = np.array(
        [[2.0, 1.5, 1.0, 0.0, -1.0, 1.0], [0.0, 1.0, -1.5, 2.0, 1.0, 1.0]]
    )
    noise = np.random.default_rng(seed + 1000).normal(scale=0.6, size=(N, 6))
    return gaussian_data(seed) @ mixing + noise


CASES = [
    Case("gaussian-full", Gaussian("full"), gaussian_data, 50),
    Case("gaussian-tied", Gaussian("tied"), gaussian_data),
    Case("gaussian-diag", Gaussian("diag"), gaussian_data, 50, drivers=True),
    Case("gaussian-spherical", Gaussian("spherical"), gaussian_data),
    Case("gaussian-fixed-variance", Gaussian("spherical", variance=0.5), gaussian_data),
    Case("gaussian-uniform", Gaussian("diag", uniform_weights=True), gaussian_data),
    Case("gaussian-map-full", _map_gaussian("full", PSI), gaussian_data),
    Case("gaussian-map-tied", _map_gaussian("tied", PSI), gaussian_data),
    Case(
        "gaussian-map-diag", _map_gaussian("diag", np.array([1.0, 0.5])), gaussian_data
    ),
    Case("gaussian-map-spherical", _map_gaussian("spherical", 0.75), gaussian_data),
    Case(
        "isotropic",
        IsotropicGaussian(variance=0.5, uniform_weights=False),
        gaussian_data,
    ),
    Case("kmeans", IsotropicGaussian(), gaussian_data, drivers=True),
    Case("kmedians", Laplace(), gaussian_data, drivers=True),
    Case("bernoulli", Bernoulli(), binary_data, drivers=True),
    Case(
        "bernoulli-map",
        Bernoulli(weight_concentration=2.0, mean_prior=(2.0, 3.0)),
        binary_data,
        50,
    ),
    Case("poisson", Poisson(), binary_data),
    Case("factor-diag", FactorAnalyzer(n_factors=2), factor_data, drivers=True),
    Case(
        "factor-tied-diag",
        FactorAnalyzer(n_factors=2, noise_type="tied_diag"),
        factor_data,
    ),
    Case(
        "factor-isotropic",
        FactorAnalyzer(n_factors=1, noise_type="isotropic"),
        factor_data,
    ),
    Case("student-full", StudentT("full"), gaussian_data, 50, drivers=True),
    Case(
        "student-tied-fixed-dof",
        StudentT("tied", dof=3.0, learn_dof=False),
        gaussian_data,
    ),
    Case(
        "categorical",
        Categorical(n_levels=4),
        lambda s: binary_data(s) + 2 * binary_data(s + 9),
        drivers=True,
    ),
    Case("von-mises-fisher", VonMisesFisher(), sphere_data, drivers=True),
    # No closed-form M-step: fitted by generalized EM, with enough optimiser
    # steps that its M-step passes the checker's 1e-6 stationarity test (ten,
    # the default, give 1e-6 here). Its restarts and batches are tested in
    # test_generalized.py and test_gamma.py, at less compile time than here.
    Case(
        "gamma",
        Gamma(generalized_m_step=GeneralizedMStep(30)),
        lambda s: np.exp(gaussian_data(s) / 4),
    ),
]
IDS = [case.id for case in CASES]


def _params(case, seed=0):
    """A valid θ for the case's data (the checker's draw: one E-step away)."""
    report = check.check_m_step(case.family, case.data(seed), maximize_steps=case.steps)
    return report, jax.tree.map(jnp.asarray, report.params)


# ---------------------------------------------------------------------------
# The protocol's promises
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_protocol(case):
    family, data = case.family, jnp.asarray(case.data(0))
    assert isinstance(family, Family)
    assert dataclasses.is_dataclass(family)
    leaves, treedef = jax.tree.flatten(family)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert type(rebuilt) is type(family)
    assert jax.tree.structure(rebuilt) == treedef
    hash(treedef)  # static fields are hashable: they key the compiled program
    assert "weights" in family.params_type._fields
    assert set(family.charts()) <= set(family.params_type._fields)
    count = family.n_parameters(K, data.shape[1])
    assert isinstance(count, int) and count >= 0

    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, K, N))
    weights = jnp.asarray(rng.uniform(0.5, 2.0, N))
    resp = jax.nn.one_hot(labels, K, dtype=data.dtype) * weights[:, None]
    if family.soft_assignments:
        soft = jnp.asarray(rng.dirichlet(np.ones(K), N)) * weights[:, None]
        resp_for_stats = soft
    else:
        resp_for_stats = resp
    params = family.reference(data, resp_for_stats)
    assert type(params) is family.params_type
    chex.assert_tree_all_finite(params)
    chex.assert_shape(params.weights, (K,))
    if family.location_field is not None:
        chex.assert_shape(family.location(params), (K, data.shape[1]))

    if not family.closed_form_m_step:
        # Generalized EM: the M-step from responsibilities keeps the shapes.
        new = em.m_step(family, data, resp_for_stats, params=params)
        chex.assert_trees_all_equal_shapes_and_dtypes(new, params)
        return
    stats = family.statistics(params, data, resp_for_stats)
    neutral = family.empty_statistics(jax.eval_shape(lambda: stats))
    chex.assert_trees_all_close(family.combine_statistics(neutral, stats), stats)
    if family.additive_statistics:
        half = N // 2
        parts = family.combine_statistics(
            family.statistics(params, data[:half], resp_for_stats[:half]),
            family.statistics(params, data[half:], resp_for_stats[half:]),
        )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
            _finite_part(parts),
            _finite_part(stats),
        )
    log_joint = em.log_joint(family, params, data)
    best = jnp.take_along_axis(log_joint, labels[:, None], axis=1)[:, 0]
    hard = family.hard_statistics(params, data, labels, weights, best)
    one_hot = family.statistics(params, data, resp)
    chex.assert_trees_all_close(_finite_part(hard), _finite_part(one_hot), rtol=1e-12)
    new = family.m_step(stats, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(new, params)


def test_families_with_equal_fields_do_not_share_compiled_programs():
    # Poisson and Bernoulli have the same fields with the same values; a compiled
    # function keyed on the family's treedef must still tell them apart.
    bernoulli, poisson = jaxmix.families.Bernoulli(), jaxmix.families.Poisson()
    assert jax.tree.structure(bernoulli) != jax.tree.structure(poisson)
    name_length = jax.jit(lambda family, x: x + len(type(family).__name__))
    assert float(name_length(bernoulli, 0.0)) == len("Bernoulli")
    assert float(name_length(poisson, 0.0)) == len("Poisson")


def _finite_part(tree):
    """Leaves with −inf (unused candidate slots) set to zero, for comparison."""
    return jax.tree.map(lambda a: jnp.where(jnp.isneginf(a), 0, a), tree)


# ---------------------------------------------------------------------------
# Every autodiff check
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_check(case):
    # The family's M-step; with reg_covar = 1e-6 by default, which the checker drops.
    data = case.data(0)
    report, params = _params(case)
    assert report.ok, str(report)
    assert check.check_e_step(case.family, params, data).ok
    fisher = check.check_fisher_identity(case.family, params, data)
    assert fisher.ok, str(fisher)
    hard = not case.family.soft_assignments
    result = jaxmix.fit(
        case.family, jnp.asarray(data), params, max_iter=30, tol=0.0, hard=hard
    )
    monotone = check.check_monotone(result)
    assert monotone.ok and monotone.n_iter == 30, str(monotone)


# ---------------------------------------------------------------------------
# The drivers take every family unchanged
# ---------------------------------------------------------------------------


DRIVER_CASES = [case for case in CASES if case.drivers]


@pytest.mark.parametrize("case", DRIVER_CASES, ids=[c.id for c in DRIVER_CASES])
def test_drivers(case):
    family, data = case.family, jnp.asarray(case.data(0))
    hard = not family.soft_assignments
    method = "k-means++" if hard else "random"
    key = jax.random.key(1)
    restarts = jaxmix.fit_restarts(
        family, data, key, K, 2, method=method, max_iter=10, hard=hard
    )
    # The best restart is one of the restarts, the one the rule picks.
    chex.assert_trees_all_close(
        restarts.best, jax.tree.map(lambda a: a[restarts.best_index], restarts.all)
    )
    stack = jnp.stack([data, jnp.asarray(case.data(1))])
    many = jaxmix.fit_many(family, stack, key, K, method=method, max_iter=10, hard=hard)
    assert many.n_iter.shape == (2,)
    if not hard:
        # The masked sweep needs soft EM (and maximum likelihood: a masked
        # component would enter a prior's density).
        sweep = jaxmix.select_n_components(
            family, data, key, 2, method=method, max_iter=10
        )
        assert sweep.bic.shape == (1, 2)
        assert np.all(np.isfinite(sweep.bic))
        if family.charts():
            start = jax.tree.map(lambda a: a[0], restarts.all.params)
            _, trace = jaxmix.fit_gradient(family, data, start, steps=5)
            assert np.all(np.isfinite(np.asarray(trace)))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_new_data_and_numbers_do_not_recompile(case):
    """The fit is traced once per family structure and data shape.

    The second fit has new data, a new start and new values of every traced
    number of the family (reg_covar, variances, prior strengths).
    """
    counted = chex.assert_max_traces(em.run_em, n=1)
    fit = jax.jit(
        counted, static_argnames=("max_iter", "hard", "chunk_size", "criterion")
    )
    hard = not case.family.soft_assignments
    for seed in (0, 1):
        data = jnp.asarray(case.data(seed))
        _, params = _params(case, seed)
        family = jax.tree.map(lambda v, s=seed: v * (1.0 + 0.01 * s), case.family)
        fit(family, data, params, 1e-3, None, -jnp.inf, max_iter=5, hard=hard)
    chex.clear_trace_counter()
