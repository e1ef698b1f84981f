"""Mixing-weight updates shared by every family."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def guarded_counts(counts: Array) -> Array:
    """N_k plus ten machine epsilons, so an emptied component divides safely."""
    return counts + 10 * jnp.finfo(counts.dtype).eps


def update_weights(counts: Array, uniform: bool) -> Array:
    r"""Maximum-likelihood weights :math:`π_k = N_k / Σ_j N_j` (or 1/K if fixed)."""
    if uniform:
        return jnp.full_like(counts, 1.0 / counts.shape[0])
    return counts / jnp.sum(counts)
