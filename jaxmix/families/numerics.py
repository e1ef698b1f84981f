"""Small numerical helpers shared by the families."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def safe_log(values: Array, valid: Array) -> Array:
    """log(values) where ``valid``, 0 elsewhere, with finite gradients everywhere.

    The inner ``where`` keeps the gradient finite at the entries that are not
    valid (a log of 0 would give an infinite derivative there, and 0 · inf is
    NaN in the backward pass).
    """
    return jnp.where(valid, jnp.log(jnp.where(valid, values, 1.0)), 0.0)
