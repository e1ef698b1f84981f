"""Shared fixtures: small real data sets, a float64 switch, hypothesis profiles."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import settings

from jaxmix.datasets import load_faithful

# Property tests draw the same examples on every run (derandomize: the seed is
# a hash of the test), so a failure in CI reproduces anywhere; derandomize also
# turns off the example database. Every example is a fit (a new shape, a new
# compilation), so examples are few: at most 25, and each test's @settings may
# lower that; fits take seconds, so no deadline. To hunt for new
# counterexamples with random draws: pytest --hypothesis-profile=explore.
settings.register_profile(
    "jaxmix", derandomize=True, max_examples=25, deadline=None, print_blob=True
)
settings.register_profile("explore", deadline=None)
settings.load_profile("jaxmix")

# Importing jaxmix turns on JAX's persistent compilation cache (jaxmix._cache):
# every module drops its compiled programs when it ends (below), and the test
# workers share the cache, so a program another module or worker compiled is
# loaded instead of rebuilt.


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread():
    """scikit-learn's references on one BLAS/OpenMP thread.

    JAX keeps its own thread pool; letting NumPy's BLAS and scikit-learn's OpenMP
    spawn theirs beside it on two cores oversubscribes the machine (a reference
    fit measured 40x slower that way).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    XLA's CPU backend maps a few memory regions per compiled program, and the
    kernel allows a process 65,530 maps (vm.max_map_count): the whole suite in
    one process compiles more programs than that allows, and XLA then crashes
    while compiling. Programs are shared within a module, rarely across.
    """
    yield
    jax.clear_caches()


@pytest.fixture
def x64():
    """Run a test with JAX's float64 enabled, restoring the flag afterwards."""
    with jax.enable_x64(True):
        yield


def real_datasets() -> dict[str, np.ndarray]:
    """Old Faithful plus the real data sets that ship with scikit-learn."""
    from sklearn import datasets

    return {
        "faithful": load_faithful()[0],
        "iris": datasets.load_iris().data,
        "wine": datasets.load_wine().data,
        "breast_cancer": datasets.load_breast_cancer().data,
        "digits": datasets.load_digits().data,
    }


def spread_start(X: np.ndarray, n_components: int, covariance_type: str):
    """A deterministic start: K spread-out samples, the data covariance, 1/K weights.

    Returns weights, means and precisions in scikit-learn's shapes.
    """
    X = np.asarray(X, dtype=np.float64)
    order = np.argsort(X @ np.linspace(1.0, 2.0, X.shape[1]))
    means = X[order[np.linspace(0, len(X) - 1, n_components).astype(int)]]
    variance = X.var(axis=0) + 1e-3 * X.var(axis=0).mean() + 1e-6
    d = X.shape[1]
    cov = np.cov(X.T, bias=True).reshape(d, d) + np.diag(1e-3 * variance)
    precisions = {
        "full": np.stack([np.linalg.inv(cov)] * n_components),
        "tied": np.linalg.inv(cov),
        "diag": np.tile(1.0 / variance, (n_components, 1)),
        "spherical": np.full(n_components, 1.0 / variance.mean()),
    }[covariance_type]
    weights = np.full(n_components, 1.0 / n_components)
    return weights, means, precisions
