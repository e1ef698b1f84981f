r"""Fitting a mixture by gradient ascent on the log-likelihood: a baseline for EM.

EM is a bound-optimisation method; the obvious alternative is to climb the
log-likelihood directly with a first-order optimizer. :func:`fit_gradient` does
that in the unconstrained coordinates of :mod:`jaxmix.families.charts` (softmax
weights, means in units of the data's standard deviation, Cholesky factors
with log diagonal, log variances, logits), so every step is feasible.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmix.engine import em
from jaxmix.families import charts

Array = jax.Array

_DEFAULT_OPTIMIZER = optax.adam(1e-2)


class GradientFitResult(NamedTuple):
    """Outcome of :func:`fit_gradient`; unpacks as ``params, trace``."""

    params: Any  # the family's params after the last step
    trace: Array  # (steps,)  objective before each step


def _fit_gradient(family, X, params, *, optimizer, steps):
    n_samples = X.shape[0]
    scale = charts.data_scale(X)
    coords = charts.to_unconstrained(family, params, scale)
    optimizer = optax.with_extra_args_support(optimizer)

    def loss(c):
        current = charts.to_params(family, c, params, scale)
        log_prob = em.log_joint(family, current, X)
        total = jnp.sum(jax.nn.logsumexp(log_prob, axis=1)) + family.log_prior(current)
        return -total / n_samples

    def step(carry, _):
        current, state = carry
        value, grad = jax.value_and_grad(loss)(current)
        updates, state = optimizer.update(
            grad, state, current, value=value, grad=grad, value_fn=loss
        )
        return (optax.apply_updates(current, updates), state), -value

    start = (coords, optimizer.init(coords))
    (coords, _), trace = jax.lax.scan(step, start, None, length=steps)
    return GradientFitResult(charts.to_params(family, coords, params, scale), trace)


_fit_gradient_jit = jax.jit(_fit_gradient, static_argnames=("optimizer", "steps"))


def fit_gradient(
    family,
    X: Array,
    params,
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 500,
) -> GradientFitResult:
    r"""Maximise the mean log-likelihood by a first-order optimizer, as one program.

    Runs ``steps`` optimizer steps in one jitted ``lax.scan`` on

    .. math::
        \frac{1}{N} \Big( Σ_n \log Σ_k π_k p(x_n | θ_k) + \log p(θ) \Big)

    (the objective EM reports; the log prior is zero for maximum likelihood), in
    unconstrained coordinates: softmax weights, means scaled by the data's
    standard deviation, covariances through a Cholesky factor with log diagonal,
    log variances, logits for probabilities. Fields the family fixes (uniform
    weights, a known variance) stay fixed.

    Args:
      family: the model family.
      X: data, shape (N, D).
      params: the starting params (e.g. from :func:`jaxmix.initialize`).
      optimizer: an optax optimizer, e.g. ``optax.adam(1e-2)`` (the default);
        optimizers that need the objective, like ``optax.lbfgs()``, work too.
        It is a static argument: reuse one optimizer object across calls to
        avoid recompiling.
      steps: number of optimizer steps (static).

    Returns:
      A :class:`GradientFitResult` ``(params, trace)``: the final params and the
      objective before each step, shape (steps,).

    Examples:
      >>> import jax, jaxmix
      >>> X = jax.random.normal(jax.random.key(0), (200, 2))
      >>> family = jaxmix.families.Gaussian("diag")
      >>> start = jaxmix.initialize(family, jax.random.key(1), X, 2)
      >>> params, trace = jaxmix.fit_gradient(family, X, start, steps=100)
      >>> bool(trace[-1] >= trace[0])
      True
    """
    X = jnp.asarray(X)
    if X.ndim != 2:
        raise ValueError(
            f"X must be a 2-D array (n_samples, n_features), got {X.shape}"
        )
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if optimizer is None:
        optimizer = _DEFAULT_OPTIMIZER
    return _fit_gradient_jit(family, X, params, optimizer=optimizer, steps=steps)
