"""What the checks share: input handling and the EM objective in coordinates."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine import em
from jaxmix.families import charts
from jaxmix.families.missing import fill_missing

Array = jax.Array


# --------------------------------------------------------------------------
# Objectives, in unconstrained coordinates (jitted once per family structure)
# --------------------------------------------------------------------------


def expected_complete_log_likelihood(
    family, X, resp, coords, base, scale, fixed=None, old=None
):
    """Q(θ(u)) = Σ r_nk [log π_k + log p(x_n | θ_k)] + log p(θ).

    ``fixed`` (a full mask) holds its entries at ``base`` (:func:`charts.hold`).
    With missing values, log p(x_n | θ_k) is its expectation over the missing
    entries given the observed ones under ``old`` (θ_old): Q(θ | θ_old).
    """
    params = charts.to_params(family, coords, base, scale, fixed)
    if family.missing_values:
        log_prob = expected_log_joint(family, params, old, X)
    else:
        log_prob = em.log_joint(family, params, X)
    weighted = jnp.where(resp > 0, resp * log_prob, 0.0)
    return jnp.sum(weighted) + family.log_prior(params)


def expected_log_joint(family, params, old, X):
    """log π_k + E[log p(x_n | θ_k)] over the missing entries given θ_old, (N, K).

    The expectation is :meth:`jaxmix.families.base.Family.expected_log_density`
    (the complete-data log density for complete data).
    """
    active = params.weights > 0
    log_prob = family.expected_log_density(params, old, X) + jnp.log(params.weights)
    return jnp.where(active, log_prob, -jnp.inf)


def log_likelihood(family, X, coords, base, scale):
    """log p(X | θ(u)) + log p(θ)."""
    params = charts.to_params(family, coords, base, scale)
    log_prob = em.log_joint(family, params, X)
    return jnp.sum(jax.nn.logsumexp(log_prob, axis=1)) + family.log_prior(params)


e_step_jit = jax.jit(em.e_step, static_argnames=("hard",))
m_step_jit = jax.jit(em.m_step)
log_joint_jit = jax.jit(em.log_joint)


# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------


def as_data(X, allow_nan: bool = False) -> Array:
    """X as a float64 array; NaN (missing values) only if ``allow_nan``."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(
            f"X must be a 2-D array (n_samples, n_features), got {X.shape}"
        )
    if X.shape[0] < 1:
        raise ValueError("X must contain at least one sample")
    if allow_nan:
        if np.any(np.isinf(X)):
            raise ValueError(
                "X contains infinite values; only NaN marks a missing value"
            )
        empty = np.flatnonzero(np.all(np.isnan(X), axis=1))
        if empty.size:
            raise ValueError(f"row {empty[0]} of X has no observed value (all NaN)")
    elif not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")
    return jnp.asarray(X)


def as_float64(params):
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, dtype=np.float64)), params)


def describe(family) -> str:
    """``Name(field=value, ...)`` with the fields that are set (not None)."""
    if not dataclasses.is_dataclass(family):
        return repr(family)
    items = []
    for name, value in vars(family).items():
        if value is not None:
            # Leaf by leaf: a prior may be a pair of arrays of different shapes.
            plain = jax.tree.map(lambda v: np.asarray(v).tolist(), value)
            items.append(f"{name}={plain!r}")
    return f"{type(family).__name__}({', '.join(items)})"


def without_ridge(family):
    """The family with reg_covar = 0 (the maximiser of Q is unregularised)."""
    if dataclasses.is_dataclass(family) and any(
        f.name == "reg_covar" for f in dataclasses.fields(family)
    ):
        return dataclasses.replace(family, reg_covar=0.0)
    return family


@functools.partial(jax.jit, static_argnames=("n_components",))
def random_responsibilities(key, X, *, n_components):
    """Soft assignments to K random samples, by squared distance.

    Sharper than uniform random responsibilities (which make every component
    the same), softer than one-hot ones (which make covariances singular).
    """
    indices = jax.random.choice(key, X.shape[0], (n_components,), replace=False)
    distances = jnp.sum(jnp.square(X[:, None, :] - X[indices][None]), axis=-1)
    spread = jnp.sum(jnp.var(X, axis=0)) + jnp.finfo(X.dtype).tiny
    return jax.nn.softmax(-distances / spread, axis=1)


def draw_params(family, key, X, n_components):
    """θ_old from random responsibilities (one-hot for hard-only families)."""
    if not 1 <= n_components <= X.shape[0]:
        raise ValueError(
            f"n_components must be between 1 and n_samples={X.shape[0]}, "
            f"got {n_components}"
        )
    resp = random_responsibilities(key, fill_missing(X), n_components=n_components)
    if not family.soft_assignments:
        resp = jax.nn.one_hot(jnp.argmax(resp, axis=1), n_components, dtype=X.dtype)
    return m_step_jit(family, X, resp)


def responsibilities(family, params, X):
    """The E-step's responsibilities at θ_old (hard for hard-only families)."""
    return e_step_jit(family, params, X, hard=not family.soft_assignments)[0]


def returned_fields(returned, params) -> dict[str, np.ndarray]:
    """The M-step's output as {field: float64 array}, checked against ``params``."""
    names = params._fields
    if isinstance(returned, Mapping):
        values = dict(returned)
    elif hasattr(returned, "_asdict"):
        values = dict(returned._asdict())
    else:
        values = {
            name: getattr(returned, name) for name in names if hasattr(returned, name)
        }
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(
            f"the M-step returned unknown field(s) {unknown}; "
            f"{type(params).__name__} has fields {list(names)}"
        )
    out = {}
    for name, value in values.items():
        value = np.asarray(value, dtype=np.float64)
        expected = np.shape(getattr(params, name))
        if value.shape != expected:
            raise ValueError(
                f"the M-step returned {name} of shape {value.shape}, "
                f"expected {expected}"
            )
        out[name] = value
    return out
