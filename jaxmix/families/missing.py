"""Missing values: NaN entries of X, read as missing at random (MAR).

A family with ``missing_values=True`` lets each sample contribute through its
observed features: the E-step uses each component's marginal density of the
observed entries, and the statistics the conditional expectations of the
missing ones (and, for the Gaussian, their conditional covariances), which is
exact EM for the observed-data likelihood. The missingness enters compiled
programs as a mask, never as a shape. These helpers are shared by the
families and the engine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def split_missing(X: Array) -> tuple[Array, Array]:
    """``(values, observed)``: X with NaN replaced by 0, and the mask of the others.

    The zeros keep NaN out of every product (and out of gradients, which a NaN
    in the unselected branch of a ``where`` would still poison).
    """
    observed = ~jnp.isnan(X)
    return jnp.where(observed, X, 0), observed


def observed_mean(X: Array, weights: Array | None = None) -> Array:
    """Each feature's (weighted) mean over its observed entries, (D,).

    A feature with no observed value (of positive weight) gets 0.
    """
    values, observed = split_missing(X)
    if weights is None:
        weights = jnp.ones(X.shape[:1], X.dtype)
    counts = weights @ observed.astype(X.dtype)
    sums = weights @ values
    return jnp.where(counts > 0, sums / jnp.where(counts > 0, counts, 1), 0)


def fill_missing(X: Array, weights: Array | None = None) -> Array:
    """X with every NaN entry replaced by its feature's observed (weighted) mean."""
    return jnp.where(jnp.isnan(X), observed_mean(X, weights), X)


def completed(values: Array, observed: Array, expected: Array) -> Array:
    """Each sample completed per component, (N, K, D): x_nd where observed,
    ``expected`` (K, D) (the component's mean of x_d) where missing.
    """
    return jnp.where(observed[:, None, :], values[:, None, :], expected[None])


def missing_counts(observed: Array, resp: Array) -> Array:
    """Σ_n r_nk [x_nd missing], (K, D): the weight of each component's guesses."""
    return resp.T @ (~observed).astype(resp.dtype)


def rows_by_missing_count(X: Array, weights: Array) -> tuple[Array, Array]:
    """X and its sample weights with the rows in increasing count of NaN entries.

    A stable order, taken once per fit: the statistics are sums over rows, so
    EM is unchanged, and blocks of consecutive rows then have similar counts,
    which lets the Gaussian family condition each block on a small missing
    block (see the missing values section of
    :mod:`jaxmix.families.covariance_kernels`).
    """
    order = jnp.argsort(jnp.sum(jnp.isnan(X), axis=1), stable=True)
    return X[order], weights[order]
