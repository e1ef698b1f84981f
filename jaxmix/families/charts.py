r"""Unconstrained coordinates for every family's parameters.

The autodiff checks (:mod:`jaxmix.check`) and gradient fitting
(:mod:`jaxmix.engine.gradient`) work in coordinates where every value is feasible:

- weights on the simplex through softmax coordinates ``u`` (π = softmax(u)),
  so a point is stationary under the constraint Σ π_k = 1 exactly when the
  gradient with respect to ``u`` is zero (the Lagrange condition);
- means in units of the data's standard deviation ``s`` (μ = s ⊙ u);
- full and tied covariances through a Cholesky factor Σ = L Lᵀ with
  L = diag(s) L̃, whose strict lower triangle is free and whose diagonal is
  stored as its logarithm (so Σ stays symmetric positive definite);
- diagonal and spherical variances as log-variances relative to s²;
- probabilities (Bernoulli means) as logits.

Scaling by ``s`` makes every coordinate dimensionless, so a gradient divided by
N is comparable across fields and data sets.

Each family lists its free fields' charts in its ``charts()`` method (see
:class:`jaxmix.families.base.Family`): fields the family fixes (uniform
weights, a known variance) are left out and keep the value they have in the
base params. A chart is a small class with ``to_unconstrained(value, scale)``,
``to_value(coords, scale)`` (coordinates have the value's shape),
``infeasibility(value) -> str | None`` (host-side, NumPy) and ``per_component``
(whether the leading axis indexes components). A new family can use these
charts or write its own with the same four members.

With fixed parameters (:mod:`jaxmix.families.fixed`) the free entries of a
field are its coordinates and the fixed ones keep their values
(:func:`hold`); the weights' chart then maps onto the simplex scaled to the
mass the fixed weights leave (:meth:`Simplex.hold`), so a zero gradient is the
Lagrange condition of the constrained problem.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Relative asymmetry tolerated in a returned covariance matrix.
_SYMMETRY_RTOL = 1e-8
# Tolerance on Σ π_k = 1 for returned weights.
_SIMPLEX_ATOL = 1e-8


def data_scale(X: Array, weights: Array | None = None) -> Array:
    """Per-feature standard deviation of X (1 where a feature is constant), (D,).

    With sample ``weights`` (N,) it is the weighted deviation, so rows of zero
    weight (padding) leave it unchanged.
    """
    if weights is None:
        scale = jnp.std(X, axis=0)
    else:
        total = jnp.sum(weights)
        mean = (weights @ X) / total
        scale = jnp.sqrt((weights @ jnp.square(X - mean)) / total)
    return jnp.where(scale > 0, scale, jnp.ones_like(scale))


def _not_finite(value: np.ndarray) -> str | None:
    if not np.all(np.isfinite(value)):
        return "contains NaN or infinite values"
    return None


class Simplex:
    """Mixing weights π = softmax(u), centred so that Σ u_k = 0."""

    per_component = True

    @staticmethod
    def to_unconstrained(value: Array, scale: Array) -> Array:
        del scale
        log_value = jnp.log(jnp.maximum(value, jnp.finfo(value.dtype).tiny))
        return log_value - jnp.mean(log_value)

    @staticmethod
    def to_value(coords: Array, scale: Array) -> Array:
        del scale
        return jax.nn.softmax(coords)

    @staticmethod
    def hold(value: Array, base: Array, fixed: Array) -> Array:
        r"""Fixed weights from ``base``; the free ones on the scaled simplex.

        :math:`π_k = (1 − Σ_{j \text{ fixed}} π_j) \, e^{u_k} / Σ_{j \text{ free}}
        e^{u_j}` for a free k: the softmax of the free coordinates, scaled to
        the mass the fixed weights leave.
        """
        free_mass = 1 - jnp.sum(jnp.where(fixed, base, 0))
        total = jnp.sum(jnp.where(fixed, 0, value))
        total = jnp.where(jnp.any(~fixed), total, 1)  # all fixed: no 0/0
        return jnp.where(fixed, base, free_mass * value / total)

    @staticmethod
    def infeasibility(value: np.ndarray) -> str | None:
        if message := _not_finite(value):
            return message
        if np.any(value < 0):
            return f"negative weight {value.min():.3g}"
        total = value.sum()
        if abs(total - 1.0) > _SIMPLEX_ATOL:
            return f"weights sum to {total:.6g}, not 1"
        return None


class Location:
    """Means in units of the data's standard deviation: μ = s ⊙ u."""

    per_component = True

    @staticmethod
    def to_unconstrained(value: Array, scale: Array) -> Array:
        return value / scale

    @staticmethod
    def to_value(coords: Array, scale: Array) -> Array:
        return coords * scale

    infeasibility = staticmethod(_not_finite)


class Probability:
    """Probabilities in (0, 1) as logits; 0 and 1 are clipped to ε and 1 − ε."""

    per_component = True

    @staticmethod
    def to_unconstrained(value: Array, scale: Array) -> Array:
        del scale
        eps = jnp.finfo(value.dtype).eps
        return jax.scipy.special.logit(jnp.clip(value, eps, 1 - eps))

    @staticmethod
    def to_value(coords: Array, scale: Array) -> Array:
        del scale
        return jax.nn.sigmoid(coords)

    @staticmethod
    def infeasibility(value: np.ndarray) -> str | None:
        if message := _not_finite(value):
            return message
        if np.any(value < 0) or np.any(value > 1):
            return (
                f"values outside [0, 1] (from {value.min():.3g} to {value.max():.3g})"
            )
        return None


def _tril_to_cholesky(coords: Array, scale: Array) -> Array:
    """Coordinates (..., D, D) → L = diag(s) (tril(u, −1) + e^{diag u})."""
    log_diag = jnp.diagonal(coords, axis1=-2, axis2=-1)
    unit = jnp.tril(coords, -1) + jnp.exp(log_diag)[..., None] * jnp.eye(
        coords.shape[-1], dtype=coords.dtype
    )
    return scale[:, None] * unit


class Cholesky:
    """SPD matrices (..., D, D) through Σ = L Lᵀ, L = diag(s) L̃, log-diagonal L̃.

    The upper triangle of the coordinates is unused (its gradient is zero).
    """

    per_component = True

    @staticmethod
    def to_unconstrained(value: Array, scale: Array) -> Array:
        lower = jnp.linalg.cholesky(value) / scale[:, None]
        diag = jnp.diagonal(lower, axis1=-2, axis2=-1)
        eye = jnp.eye(value.shape[-1], dtype=value.dtype)
        return jnp.tril(lower, -1) + jnp.log(diag)[..., None] * eye

    @staticmethod
    def to_value(coords: Array, scale: Array) -> Array:
        lower = _tril_to_cholesky(coords, scale)
        return lower @ jnp.swapaxes(lower, -1, -2)

    @staticmethod
    def infeasibility(value: np.ndarray) -> str | None:
        if message := _not_finite(value):
            return message
        asymmetry = np.max(np.abs(value - np.swapaxes(value, -1, -2)), initial=0.0)
        size = np.max(np.abs(value), initial=0.0)
        if asymmetry > _SYMMETRY_RTOL * size:
            return f"not symmetric (largest asymmetry {asymmetry:.3g})"
        eigenvalues = np.linalg.eigvalsh(value)
        smallest = eigenvalues[..., 0]
        if np.any(smallest <= 0):
            where = ""
            if smallest.ndim == 1:
                where = f" for component {int(np.argmin(smallest))}"
            return (
                f"not positive definite (smallest eigenvalue "
                f"{smallest.min():.3g}{where})"
            )
        return None


class TiedCholesky(Cholesky):
    """One SPD matrix shared by all components."""

    per_component = False


class LogVariance:
    """Positive per-feature variances (K, D) as log(σ² / s²)."""

    per_component = True

    @staticmethod
    def to_unconstrained(value: Array, scale: Array) -> Array:
        return jnp.log(value / jnp.square(scale))

    @staticmethod
    def to_value(coords: Array, scale: Array) -> Array:
        return jnp.exp(coords) * jnp.square(scale)

    @staticmethod
    def infeasibility(value: np.ndarray) -> str | None:
        if message := _not_finite(value):
            return message
        if np.any(value <= 0):
            return f"non-positive variance {value.min():.3g}"
        return None


class LogPositive:
    r"""Positive values as :math:`u = \log(v / s^p)`, s the data's scale.

    ``power`` is the value's dimension in units of x: 0 for a shape, a
    concentration or degrees of freedom (no unit, and the scale is not used,
    so the values may be (K,) as well as (K, D)), 1 for a mean, −1 for a rate;
    every coordinate is then dimensionless. ``name`` is what the values are,
    for the infeasibility message.
    """

    per_component = True

    def __init__(self, power: int = 0, name: str = "value"):
        self.power = power
        self.name = name

    def to_unconstrained(self, value: Array, scale: Array) -> Array:
        coords = jnp.log(jnp.maximum(value, jnp.finfo(value.dtype).tiny))
        return coords if self.power == 0 else coords - self.power * jnp.log(scale)

    def to_value(self, coords: Array, scale: Array) -> Array:
        if self.power == 0:
            return jnp.exp(coords)
        return jnp.exp(coords + self.power * jnp.log(scale))

    def infeasibility(self, value: np.ndarray) -> str | None:
        if message := _not_finite(value):
            return message
        if np.any(value <= 0):
            return f"non-positive {self.name} {value.min():.3g}"
        return None


class SphericalLogVariance(LogVariance):
    """One positive variance per component (K,) as log(σ² / mean(s²))."""

    @staticmethod
    def to_unconstrained(value: Array, scale: Array) -> Array:
        return jnp.log(value / jnp.mean(jnp.square(scale)))

    @staticmethod
    def to_value(coords: Array, scale: Array) -> Array:
        return jnp.exp(coords) * jnp.mean(jnp.square(scale))


def charts(family) -> dict[str, Any]:
    """The charts of the free fields of the family's params (``family.charts()``)."""
    return dict(family.charts())


def to_unconstrained(family, params, scale: Array) -> dict[str, Array]:
    """Free fields of ``params`` as a dict of unconstrained coordinates."""
    return {
        name: chart.to_unconstrained(getattr(params, name), scale)
        for name, chart in charts(family).items()
    }


def hold(chart, value: Array, base: Array, fixed: Array) -> Array:
    """A field's value with its ``fixed`` entries (a boolean mask) from ``base``.

    A chart may define ``hold(value, base, fixed)`` where the free entries are
    constrained by the fixed ones (:meth:`Simplex.hold`); otherwise the free
    entries are the chart's values.
    """
    if hasattr(chart, "hold"):
        return chart.hold(value, base, fixed)
    return jnp.where(fixed, base, value)


def to_params(family, coords: dict[str, Array], base, scale: Array, fixed=None):
    """Params from coordinates; fixed fields are taken from ``base``.

    ``fixed``, a full mask (:func:`jaxmix.families.fixed.fixed_mask`), also
    takes the fixed entries of the free fields from ``base`` (:func:`hold`).
    """
    values = {}
    for name, chart in charts(family).items():
        value = chart.to_value(coords[name], scale)
        if fixed is not None:
            value = hold(chart, value, getattr(base, name), getattr(fixed, name))
        values[name] = value
    return base._replace(**values)
