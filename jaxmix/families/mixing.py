"""Mixing-weight updates and the Dirichlet prior, shared by every family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, xlogy

Array = jax.Array


def guarded_counts(counts: Array) -> Array:
    """N_k plus ten machine epsilons, so an emptied component divides safely."""
    return counts + 10 * jnp.finfo(counts.dtype).eps


def update_weights(counts: Array, uniform: bool) -> Array:
    r"""Maximum-likelihood weights :math:`π_k = N_k / Σ_j N_j` (or 1/K if fixed)."""
    if uniform:
        return jnp.full_like(counts, 1.0 / counts.shape[0])
    return counts / jnp.sum(counts)


def update_weights_map(counts: Array, concentration, uniform: bool) -> Array:
    r"""MAP weights under a Dirichlet(α) prior (or 1/K if fixed).

    .. math::
        π_k = \frac{N_k + α_k − 1}{N + Σ_j α_j − K}

    the mode of the Dirichlet(N_k + α_k) posterior; it is a point of the simplex
    when every :math:`α_k ≥ 1`. ``concentration`` is None (maximum likelihood),
    a scalar (the same α for every component) or an array of shape (K,).
    """
    if uniform or concentration is None:
        return update_weights(counts, uniform)
    shifted = counts + jnp.broadcast_to(concentration, counts.shape) - 1
    return shifted / jnp.sum(shifted)


def log_dirichlet(weights: Array, concentration, uniform: bool) -> Array:
    r"""Log density of the Dirichlet(α) prior at the weights (normalised).

    .. math::
        \log Γ(Σ_k α_k) − Σ_k \log Γ(α_k) + Σ_k (α_k − 1) \log π_k

    with :math:`0 · \log 0 = 0`, so α_k = 1 and an emptied component give no NaN.
    Zero when there is no prior or the weights are fixed at 1/K.
    """
    if uniform or concentration is None:
        return jnp.zeros((), weights.dtype)
    alpha = jnp.broadcast_to(jnp.asarray(concentration, weights.dtype), weights.shape)
    return (
        gammaln(jnp.sum(alpha))
        - jnp.sum(gammaln(alpha))
        + jnp.sum(xlogy(alpha - 1, weights))
    )


def update_weights_fixed(new_weights: Array, weights: Array, fixed: Array) -> Array:
    r"""Weights with the entries where ``fixed`` is True held at ``weights``.

    The free weights share the mass the fixed ones leave, in proportion to
    their (prior-shifted) counts:

    .. math::
        π_k = \Big(1 − Σ_{j \text{ fixed}} π_j\Big)
              \frac{N_k + α_k − 1}{Σ_{j \text{ free}} (N_j + α_j − 1)},

    the maximiser of :math:`Σ_k (N_k + α_k − 1) \log π_k` over the free weights
    on the scaled simplex (α = 1: maximum likelihood). The unconstrained
    (MAP) weights :func:`update_weights_map` are proportional to
    :math:`N_k + α_k − 1`, so they are rescaled here. Fixed entries are
    ``weights``' own, bit for bit.

    Args:
      new_weights: the unconstrained M-step's weights, (K,).
      weights: the current weights, holding the fixed values, (K,).
      fixed: boolean mask of fixed weights, (K,).
    """
    free_mass = 1 - jnp.sum(jnp.where(fixed, weights, 0))
    total = jnp.sum(jnp.where(fixed, 0, new_weights))
    # All weights fixed: no free mass to share (and no 0/0 in the unused branch).
    total = jnp.where(total > 0, total, 1)
    return jnp.where(fixed, weights, free_mass * (new_weights / total))


def log_joint(log_density: Array, weights: Array) -> Array:
    """log π_k + log p(x_n | θ_k) (N, K) from the log densities (N, K).

    A component of weight exactly zero gets −inf, whatever its density (which
    may be undefined for a masked component), so it takes no responsibility.
    """
    return jnp.where(weights > 0, log_density + jnp.log(weights), -jnp.inf)


def posterior(log_density: Array, weights: Array) -> tuple[Array, Array]:
    """Responsibilities (N, K) by Bayes' rule in log space, and log p(x_n) (N,)."""
    log_prob = log_joint(log_density, weights)
    log_norm = jax.nn.logsumexp(log_prob, axis=1)
    return jnp.exp(log_prob - log_norm[:, None]), log_norm
