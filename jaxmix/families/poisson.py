r"""Mixture of Poissons for count data, with optional Dirichlet and Gamma priors.

Each component k is a product of independent Poisson distributions with rates
λ_k ∈ [0, ∞)^D:

.. math::
    \log p(x \mid λ_k) = Σ_d x_d \log λ_{kd} − λ_{kd} − \log Γ(x_d + 1).

The data are counts: non-negative integers (:meth:`Poisson.check_data`).
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
from jaxmix.families.missing import completed, missing_counts, split_missing
from jaxmix.families.mixing import (
    guarded_counts,
    log_dirichlet,
    update_weights_map,
)
from jaxmix.families.numerics import safe_log

Array = jax.Array


class PoissonParams(NamedTuple):
    """Parameters of a mixture of Poissons."""

    weights: Array  # (K,)
    rates: Array  # (K, D)  rates λ_kd ≥ 0 (the components' means)


class PoissonStats(NamedTuple):
    """Additive sufficient statistics (sums over samples, chunks or devices)."""

    counts: Array  # (K,)  N_k = Σ_n r_nk
    sums: Array  # (K, D)  Σ_n r_nk x_nd


class LogRate:
    r"""Positive rates (K, D) as :math:`u = \log(λ / s)`, s the data's scale.

    Dividing by the per-feature standard deviation s makes the coordinates
    dimensionless (and independent of the unit counts are measured in); a rate
    of exactly 0 (a maximum-likelihood boundary value) is read as the smallest
    positive float.
    """

    per_component = True

    @staticmethod
    def to_unconstrained(value: Array, scale: Array) -> Array:
        tiny = jnp.finfo(value.dtype).tiny
        return jnp.log(jnp.maximum(value, tiny)) - jnp.log(scale)

    @staticmethod
    def to_value(coords: Array, scale: Array) -> Array:
        return jnp.exp(coords) * scale

    @staticmethod
    def infeasibility(value: np.ndarray) -> str | None:
        if not np.all(np.isfinite(value)):
            return "contains NaN or infinite values"
        if np.any(value < 0):
            return f"negative rate {value.min():.3g}"
        return None


def _concrete(value) -> np.ndarray | None:
    """``value`` as a float64 array if it is a host number or array, else None.

    Traced values (and JAX's placeholders when pytrees are rebuilt) are not
    checked: validation belongs where the values are known.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (numbers.Real, np.ndarray)):
        return np.asarray(value, dtype=np.float64)
    return None


def _check_priors(weight_concentration, rate_prior) -> None:
    alpha = _concrete(weight_concentration)
    if alpha is not None and (not np.all(np.isfinite(alpha)) or np.any(alpha < 1)):
        raise ValueError(
            "weight_concentration must be finite and >= 1, got "
            f"{weight_concentration!r}"
        )
    if rate_prior is None:
        return
    if not isinstance(rate_prior, (tuple, list)) or len(rate_prior) != 2:
        raise ValueError(
            "rate_prior must be a pair (a, b) of Gamma shape and rate, got "
            f"{rate_prior!r}"
        )
    shape, rate = (_concrete(v) for v in rate_prior)
    if shape is not None and (not np.all(np.isfinite(shape)) or np.any(shape < 1)):
        raise ValueError(
            "rate_prior shape a must be finite and >= 1 (below 1 the Gamma density "
            f"is unbounded at 0 and has no mode), got {rate_prior[0]!r}"
        )
    if rate is not None and (not np.all(np.isfinite(rate)) or np.any(rate <= 0)):
        raise ValueError(
            f"rate_prior rate b must be finite and > 0, got {rate_prior[1]!r}"
        )


class Poisson(Family):
    r"""Specification of a mixture-of-Poissons family.

    The priors are traced pytree leaves (changing their strength does not
    recompile a jitted fit); ``uniform_weights`` is static. With no prior the
    M-step is maximum likelihood; with priors it is the MAP M-step and the
    engine's objective is the mean log-likelihood plus ``log_prior / N``.

    Args:
      weight_concentration: Dirichlet concentration α on the weights: a scalar
        or an array of shape (K,), every entry ≥ 1; None for maximum likelihood.
      rate_prior: ``(a, b)`` of a Gamma(shape a, rate b) prior on every rate
        λ_kd; each a scalar or an array broadcastable to (K, D), with a ≥ 1 and
        b > 0; None for maximum likelihood.
      uniform_weights: if True the weights stay at 1/K (and α is ignored).

    Raises:
      ValueError: ``rate_prior`` is not a pair, or a prior given as host numbers
        is out of range.

    Examples:
      >>> import jaxmix
      >>> family = jaxmix.families.Poisson(rate_prior=(2.0, 0.5))
      >>> family.n_parameters(3, 4)
      14
    """

    params_type = PoissonParams
    location_field = "rates"
    # Each λ_kd has its own maximiser: its entries can be held fixed.
    fixable_fields = ("rates",)
    prior_fields = ("weight_concentration", "rate_prior")
    # An empty component's rates are 0: density 0 where a count is positive.
    finite_empty_components = True

    weight_concentration: Any = None
    rate_prior: Any = None
    uniform_weights: bool = static(False)
    missing_values: bool = static(False)

    def __post_init__(self):
        _check_priors(self.weight_concentration, self.rate_prior)
        if isinstance(self.rate_prior, list):
            object.__setattr__(self, "rate_prior", tuple(self.rate_prior))

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters, as counted for BIC and AIC."""
        count = n_components * n_features
        if not self.uniform_weights:
            count += n_components - 1
        return count

    def charts(self):
        """Softmax coordinates for learned weights, log rates over the data scale."""
        free = {} if self.uniform_weights else {"weights": charts.Simplex}
        return {**free, "rates": LogRate}

    def check_data(self, X) -> None:
        """Counts only: non-negative integers (NaN too, with missing values)."""
        if self.missing_values:
            X = X[~np.isnan(X)]
        if X.size == 0:
            return
        low = X.min()
        if low < 0:
            raise ValueError(
                "A Poisson mixture needs counts (non-negative integers), but X has "
                f"a negative value {low:g}"
            )
        fractional = X != np.round(X)
        if np.any(fractional):
            value = X[fractional].flat[0]
            raise ValueError(
                "A Poisson mixture needs counts (non-negative integers), but X has "
                f"non-integer values (e.g. {value:g})"
            )

    def log_component_density(self, params: PoissonParams, X: Array) -> Array:
        r"""log p(x_n | λ_k) for every sample and component, shape (N, K).

        One matrix product, :math:`X \log λᵀ − Σ_d λ_{kd} − Σ_d \log Γ(x_{nd}+1)`,
        with 0 · log 0 = 0 exactly: a rate of 0 contributes nothing where
        x_d = 0 and makes the density zero (log −inf) where x_d > 0, never NaN.
        """
        rates = params.rates
        positive = rates > 0
        log_rates = safe_log(rates, positive)
        if self.missing_values:
            # Observed counts only: a missing entry (0 here) adds no rate.
            X, observed = split_missing(X)
            total_rates = observed.astype(X.dtype) @ rates.T
        else:
            total_rates = jnp.sum(rates, axis=1)[None, :]
        log_density = (
            X @ log_rates.T - total_rates - jnp.sum(gammaln(X + 1), axis=1)[:, None]
        )
        impossible = X @ (~positive).T.astype(X.dtype)
        return jnp.where(impossible > 0, -jnp.inf, log_density)

    def reference(self, X: Array, resp: Array) -> PoissonParams:
        """A valid point for these responsibilities (the statistics need none)."""
        if self.missing_values:
            return super().reference(X, resp)
        return self.m_step(self.statistics(None, X, resp), None)

    def statistics(self, params, X: Array, resp: Array) -> PoissonStats:
        """Counts and responsibility-weighted sums.

        ``params`` is not needed for complete data; with missing values a
        missing count counts as its expected value λ_kd under ``params``.
        """
        if self.missing_values:
            values, observed = split_missing(X)
            guesses = params.rates * missing_counts(observed, resp)
            return PoissonStats(jnp.sum(resp, axis=0), resp.T @ values + guesses)
        del params
        return PoissonStats(jnp.sum(resp, axis=0), resp.T @ X)

    def expected_log_density(self, params, reference, X: Array) -> Array:
        r"""E[log p(x | λ_k)] with each missing count ~ Poisson(λ_old,kd), (N, K).

        Up to E[log x_d!] of the missing counts, which does not depend on λ:
        Σ_d x̂_nkd log λ_kd − λ_kd − Σ_{d observed} log x_nd!, with x̂ the
        completed counts (missing ones replaced by ``reference``'s λ_kd).
        """
        if not self.missing_values:
            return self.log_component_density(params, X)
        values, observed = split_missing(X)
        guesses = jax.lax.stop_gradient(reference.rates)
        filled = completed(values, observed, guesses)
        rates = params.rates
        log_rates = safe_log(rates, rates > 0)
        return (
            jnp.einsum("nkd,kd->nk", filled, log_rates)
            - jnp.sum(rates, axis=1)[None, :]
            - jnp.sum(gammaln(values + 1), axis=1)[:, None]
        )

    def m_step(self, stats: PoissonStats, params) -> PoissonParams:
        r"""Closed-form (MAP) M-step.

        .. math::
            π_k = \frac{N_k + α_k − 1}{N + Σ_j α_j − K}, \qquad
            λ_{kd} = \frac{Σ_n r_{nk} x_{nd} + a − 1}{N_k + b}

        the modes of the Dirichlet and Gamma(a + Σ_n r_nk x_nd, b + N_k)
        posteriors; maximum likelihood (π_k = N_k / N,
        λ_kd = Σ_n r_nk x_nd / N_k) when there is no prior. An emptied
        component (N_k = 0) gets a guarded count, hence a finite rate.
        """
        del params
        counts = guarded_counts(stats.counts)
        if self.rate_prior is None:
            rates = stats.sums / counts[:, None]
        else:
            a, b = self.rate_prior
            rates = (stats.sums + a - 1) / (counts[:, None] + b)
        weights = update_weights_map(
            counts, self.weight_concentration, self.uniform_weights
        )
        return PoissonParams(weights, rates)

    def log_prior(self, params: PoissonParams) -> Array:
        r"""Log prior density of the parameters, normalised.

        .. math::
            \log \mathrm{Dir}(π \mid α) + Σ_{k,d} \big[a \log b − \log Γ(a)
            + (a − 1) \log λ_{kd} − b λ_{kd}\big]

        with 0 · log 0 = 0 (a = 1 and a zero rate give no NaN); zero for
        maximum likelihood.
        """
        rates = params.rates
        total = log_dirichlet(
            params.weights, self.weight_concentration, self.uniform_weights
        )
        if self.rate_prior is not None:
            a, b = (
                jnp.broadcast_to(jnp.asarray(v, rates.dtype), rates.shape)
                for v in self.rate_prior
            )
            total = total + jnp.sum(
                a * jnp.log(b) - gammaln(a) + xlogy(a - 1, rates) - b * rates
            )
        return total
