r"""Mixture of categorical distributions for coded answers, with Dirichlet priors.

Each sample has D categorical features (survey answers, say) whose values are
codes 0, 1, …, L − 1, passed to the engine as a float array (N, D). Component k
gives feature d the level distribution θ_{kd} = (θ_{kd0}, …, θ_{kd,L−1}) on the
probability simplex, independently across features:

.. math::
    \log p(x \mid θ_k) = Σ_d \log θ_{k,d,x_d}
                       = Σ_d Σ_l [x_d = l] \log θ_{kdl},

one matrix product of the one-hot codes (N, D·L) with the log probabilities
(D·L, K). A level of probability zero makes the density zero (log −inf) where
the data take it and contributes nothing elsewhere, never NaN.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, xlogy

from jaxmix.families import charts
from jaxmix.families.base import Family, static
from jaxmix.families.missing import missing_counts
from jaxmix.families.mixing import (
    guarded_counts,
    log_dirichlet,
    update_weights_map,
)
from jaxmix.families.numerics import safe_log

Array = jax.Array

# Tolerance on Σ_l θ_kdl = 1 for returned level probabilities.
_SIMPLEX_ATOL = 1e-8


class CategoricalParams(NamedTuple):
    """Parameters of a mixture of categorical distributions."""

    weights: Array  # (K,)
    probs: Array  # (K, D, L)  level probabilities θ_kdl, Σ_l θ_kdl = 1


class CategoricalStats(NamedTuple):
    """Additive sufficient statistics (sums over samples, chunks or devices)."""

    counts: Array  # (K,)  N_k = Σ_n r_nk
    level_counts: Array  # (K, D, L)  c_kdl = Σ_n r_nk [x_nd = l]


class LevelSimplex:
    """Level probabilities θ_kd = softmax(u_kd) over the last axis, Σ_l u_kdl = 0.

    The softmax coordinates of every (component, feature) distribution: the
    gradient with respect to ``u`` vanishes exactly where the gradient with
    respect to θ satisfies the Lagrange condition of Σ_l θ_kdl = 1. A level of
    probability zero maps to a large negative (finite) coordinate.
    """

    per_component = True

    @staticmethod
    def to_unconstrained(value: Array, scale: Array) -> Array:
        del scale
        log_value = jnp.log(jnp.maximum(value, jnp.finfo(value.dtype).tiny))
        return log_value - jnp.mean(log_value, axis=-1, keepdims=True)

    @staticmethod
    def to_value(coords: Array, scale: Array) -> Array:
        del scale
        return jax.nn.softmax(coords, axis=-1)

    @staticmethod
    def infeasibility(value: np.ndarray) -> str | None:
        if not np.all(np.isfinite(value)):
            return "contains NaN or infinite values"
        if np.any(value < 0):
            return f"negative probability {value.min():.3g}"
        totals = value.sum(axis=-1)
        worst = np.unravel_index(np.argmax(np.abs(totals - 1.0)), totals.shape)
        if abs(totals[worst] - 1.0) > _SIMPLEX_ATOL:
            where = ", ".join(str(int(i)) for i in worst)
            return (
                f"level probabilities sum to {totals[worst]:.6g}, not 1 "
                f"(at component, feature {where})"
            )
        return None


def _one_hot_codes(X: Array, n_levels: int) -> Array:
    """Codes (N, D) as one-hot indicators (N, D, L); a non-code row is all zero."""
    levels = jnp.arange(n_levels, dtype=X.dtype)
    return (X[..., None] == levels).astype(X.dtype)


def _is_concrete(value) -> bool:
    """A host value whose entries can be checked (not a traced leaf)."""
    host = (numbers.Real, np.ndarray, np.generic, list, tuple, str, bytes)
    return isinstance(value, host)


def _check_concentration(value, name: str, n_levels: int | None) -> None:
    """Finite entries ≥ 1; for level_prior, a last axis of 1 or L (host values)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a number or an array, got {value!r}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {value!r}") from None
    if n_levels is None:
        if array.ndim > 1:
            raise ValueError(
                f"{name} must be a scalar or of shape (K,), got shape {array.shape}"
            )
    elif array.ndim > 3 or (array.ndim >= 1 and array.shape[-1] not in (1, n_levels)):
        raise ValueError(
            f"{name} must be a scalar or broadcastable to (K, D, L) with "
            f"L = n_levels = {n_levels}, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)) or np.any(array < 1):
        raise ValueError(
            f"{name} must be finite and >= 1 (below 1 the Dirichlet density is "
            f"unbounded at the boundary and has no interior mode), got {value!r}"
        )


class Categorical(Family):
    r"""Specification of a mixture-of-categoricals family.

    ``n_levels`` is static (it is a shape); the priors are traced pytree leaves
    (changing their strength does not recompile a jitted fit);
    ``uniform_weights`` is static. With no prior the M-step is maximum
    likelihood; with priors it is the MAP M-step and the engine's objective is
    the mean log-likelihood plus ``log_prior / N``.

    Args:
      n_levels: L, the number of levels of every feature; codes are 0 … L − 1.
      weight_concentration: Dirichlet concentration α on the weights: a scalar
        or an array of shape (K,), every entry ≥ 1; None for maximum
        likelihood.
      level_prior: Dirichlet concentration β on every level distribution
        θ_kd: a scalar or an array broadcastable to (K, D, L), entries ≥ 1;
        None for maximum likelihood.
      uniform_weights: if True the weights stay at 1/K (and α is ignored).

    Raises:
      ValueError: ``n_levels`` is not a positive integer, or a prior given as
        host numbers is not finite, is below 1 or has the wrong shape.

    Examples:
      >>> import jaxmix
      >>> family = jaxmix.families.Categorical(n_levels=4, level_prior=2.0)
      >>> family.n_parameters(3, 10)
      92
    """

    params_type = CategoricalParams
    prior_fields = ("weight_concentration", "level_prior")
    # An empty component gets uniform levels.
    finite_empty_components = True

    n_levels: int = static()
    weight_concentration: Any = None
    level_prior: Any = None
    uniform_weights: bool = static(False)
    missing_values: bool = static(False)

    def __post_init__(self):
        levels = self.n_levels
        if isinstance(levels, (bool, np.bool_)) or not isinstance(
            levels, numbers.Integral
        ):
            raise ValueError(f"n_levels must be a positive integer, got {levels!r}")
        if levels < 1:
            raise ValueError(f"n_levels must be a positive integer, got {levels}")
        # A plain int: the static field is hashed into the compiled program.
        object.__setattr__(self, "n_levels", int(levels))
        # Only host values are checked: under jit and vmap the leaves are traced.
        for name, n_levels in (
            ("weight_concentration", None),
            ("level_prior", self.n_levels),
        ):
            value = getattr(self, name)
            if value is not None and _is_concrete(value):
                _check_concentration(value, name, n_levels)
                if isinstance(value, (list, tuple)):
                    object.__setattr__(self, name, np.asarray(value, np.float64))

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters: K·D·(L − 1) level probabilities (and K − 1 weights)."""
        count = n_components * n_features * (self.n_levels - 1)
        if not self.uniform_weights:
            count += n_components - 1
        return count

    def charts(self):
        """Softmax coordinates for learned weights and for every θ_kd."""
        free = {} if self.uniform_weights else {"weights": charts.Simplex}
        return {**free, "probs": LevelSimplex}

    def check_data(self, X) -> None:
        """Raise ``ValueError`` unless every value is an integer code in 0 … L − 1."""
        X = np.asarray(X)
        if self.missing_values:
            X = X[~np.isnan(X)]
            if X.size == 0:
                return
        if not np.all(np.isfinite(X)):
            raise ValueError("X contains NaN or infinite values; codes must be finite")
        fractional = X != np.round(X)
        if np.any(fractional):
            raise ValueError(
                "A categorical mixture needs integer codes 0 … L − 1, but X has "
                f"the non-integer value {X[fractional].flat[0]:g}"
            )
        low, high = X.min(), X.max()
        if low < 0 or high > self.n_levels - 1:
            raise ValueError(
                f"A categorical mixture with n_levels={self.n_levels} needs codes "
                f"0 … {self.n_levels - 1}, but X has values in [{low:g}, {high:g}]"
            )

    def log_component_density(self, params: CategoricalParams, X: Array) -> Array:
        r"""log p(x_n | θ_k) = Σ_d log θ_{k,d,x_nd} for every n and k, shape (N, K).

        One matrix product of the one-hot codes with :math:`\log θ`; a level
        of probability zero gives −inf where the data take it (counted by a
        second product) and nothing elsewhere, so there is no NaN, and the
        gradient is finite wherever the density is positive.
        """
        n_components = params.probs.shape[0]
        probs = params.probs.reshape(n_components, -1)
        one_hot = _one_hot_codes(X, self.n_levels).reshape(X.shape[0], -1)
        log_prob = one_hot @ safe_log(probs, probs > 0).T
        impossible = one_hot @ (probs <= 0).T.astype(X.dtype)
        return jnp.where(impossible > 0, -jnp.inf, log_prob)

    def statistics(self, params, X: Array, resp: Array) -> CategoricalStats:
        """Counts N_k and level counts c_kdl.

        ``params`` is not needed for complete data; with missing values a
        missing code adds θ_kdl (its expected one-hot vector) under ``params``.
        """
        if not self.missing_values:
            del params
        n_samples, n_features = X.shape
        # A missing (NaN) code has an all-zero one-hot row: it is in no level.
        one_hot = _one_hot_codes(X, self.n_levels).reshape(n_samples, -1)
        level_counts = (resp.T @ one_hot).reshape(
            resp.shape[1], n_features, self.n_levels
        )
        if self.missing_values:
            # A missing code counts as its expected one-hot vector θ_kd.
            counts = missing_counts(~jnp.isnan(X), resp)
            level_counts = level_counts + params.probs * counts[:, :, None]
        return CategoricalStats(jnp.sum(resp, axis=0), level_counts)

    def expected_log_density(self, params, reference, X: Array) -> Array:
        r"""E[log p(x | θ_k)] with each missing code ~ θ_old,kd, shape (N, K).

        Σ_d Σ_l ĥ_nkdl log θ_kdl with ĥ the one-hot codes where observed and
        ``reference``'s level probabilities where missing.
        """
        if not self.missing_values:
            return self.log_component_density(params, X)
        one_hot = _one_hot_codes(X, self.n_levels)  # (N, D, L)
        guesses = jax.lax.stop_gradient(reference.probs)  # (K, D, L)
        missing = jnp.isnan(X)[:, None, :, None]
        expected = jnp.where(missing, guesses[None], one_hot[:, None])
        log_probs = safe_log(params.probs, params.probs > 0)
        return jnp.einsum("nkdl,kdl->nk", expected, log_probs)

    def m_step(self, stats: CategoricalStats, params) -> CategoricalParams:
        r"""Closed-form (MAP) M-step.

        .. math::
            π_k = \frac{N_k + α_k − 1}{N + Σ_j α_j − K}, \qquad
            θ_{kdl} = \frac{c_{kdl} + β_{kdl} − 1}{N_k + Σ_{l'} (β_{kdl'} − 1)}

        with :math:`c_{kdl} = Σ_n r_{nk} [x_{nd} = l]`; maximum likelihood
        (π_k = N_k / N, θ_kdl = c_kdl / N_k) when there is no prior, i.e.
        α = 1 and β = 1. Because :math:`Σ_l c_{kdl} = N_k`, the denominator is
        the numerator summed over levels, which is how it is computed: every
        θ_kd sums to one to round-off, and an emptied component (all c_kdl
        and β − 1 zero) gets uniform levels 1/L instead of 0/0.
        """
        del params
        level_counts = stats.level_counts
        if self.level_prior is not None:
            beta = jnp.asarray(self.level_prior, level_counts.dtype)
            level_counts = level_counts + jnp.broadcast_to(beta, level_counts.shape) - 1
        totals = jnp.sum(level_counts, axis=-1, keepdims=True)
        filled = totals > 0
        probs = jnp.where(
            filled,
            level_counts / jnp.where(filled, totals, 1.0),
            1.0 / self.n_levels,
        )
        weights = update_weights_map(
            guarded_counts(stats.counts),
            self.weight_concentration,
            self.uniform_weights,
        )
        return CategoricalParams(weights, probs)

    def log_prior(self, params: CategoricalParams) -> Array:
        r"""Log prior density of the parameters, normalised.

        .. math::
            \log \mathrm{Dir}(π \mid α) + Σ_{k,d} \Big[\log Γ(Σ_l β_{kdl})
            − Σ_l \log Γ(β_{kdl}) + Σ_l (β_{kdl} − 1) \log θ_{kdl}\Big]

        with 0 · log 0 = 0; zero for maximum likelihood.
        """
        probs = params.probs
        total = log_dirichlet(
            params.weights, self.weight_concentration, self.uniform_weights
        )
        if self.level_prior is not None:
            beta = jnp.broadcast_to(
                jnp.asarray(self.level_prior, probs.dtype), probs.shape
            )
            total = total + jnp.sum(
                gammaln(jnp.sum(beta, axis=-1))
                - jnp.sum(gammaln(beta), axis=-1)
                + jnp.sum(xlogy(beta - 1, probs), axis=-1)
            )
        return total
