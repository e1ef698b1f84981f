r"""Mixture of Bernoullis for binary data, with optional Dirichlet and Beta priors.

Each component k is a product of independent Bernoulli distributions with means
θ_k ∈ [0, 1]^D:

.. math::
    \log p(x \mid θ_k) = Σ_d x_d \log θ_{kd} + (1 − x_d) \log(1 − θ_{kd}).

Values strictly between 0 and 1 are accepted too (they enter as expected counts).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, xlog1py, xlogy

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


class BernoulliParams(NamedTuple):
    """Parameters of a mixture of Bernoullis."""

    weights: Array  # (K,)
    means: Array  # (K, D)  probabilities θ_kd


class BernoulliStats(NamedTuple):
    """Additive sufficient statistics (sums over samples, chunks or devices)."""

    counts: Array  # (K,)  N_k = Σ_n r_nk
    sums: Array  # (K, D)  Σ_n r_nk x_nd


class Bernoulli(Family):
    r"""Specification of a mixture-of-Bernoullis family.

    The priors are traced pytree leaves (changing their strength does not
    recompile a jitted fit); ``uniform_weights`` is static. With no prior the
    M-step is maximum likelihood; with priors it is the MAP M-step and the
    engine's objective is the mean log-likelihood plus ``log_prior / N``.

    Args:
      weight_concentration: Dirichlet concentration α on the weights: a scalar
        or an array of shape (K,), every entry ≥ 1 for the MAP estimate to be a
        point of the simplex; None for maximum likelihood.
      mean_prior: ``(a, b)`` of a Beta(a, b) prior on every mean θ_kd; each a
        scalar or an array broadcastable to (K, D), entries ≥ 1; None for
        maximum likelihood.
      uniform_weights: if True the weights stay at 1/K (and α is ignored).

    Examples:
      >>> import jaxmix
      >>> family = jaxmix.families.Bernoulli(mean_prior=(2.0, 2.0))
      >>> family.n_parameters(3, 64)
      194
    """

    params_type = BernoulliParams
    location_field = "means"
    # Each θ_kd has its own maximiser: its entries can be held fixed.
    fixable_fields = ("means",)
    prior_fields = ("weight_concentration", "mean_prior")
    # An empty component's means are 0: density 0 where a bit is on.
    finite_empty_components = True

    weight_concentration: Any = None
    mean_prior: Any = None
    uniform_weights: bool = static(False)
    missing_values: bool = static(False)

    def __post_init__(self):
        if self.mean_prior is not None and (
            not isinstance(self.mean_prior, (tuple, list)) or len(self.mean_prior) != 2
        ):
            raise ValueError(
                f"mean_prior must be a pair (a, b) of Beta parameters, got "
                f"{self.mean_prior!r}"
            )
        if isinstance(self.mean_prior, list):
            object.__setattr__(self, "mean_prior", tuple(self.mean_prior))

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters, as counted for BIC and AIC."""
        count = n_components * n_features
        if not self.uniform_weights:
            count += n_components - 1
        return count

    def charts(self):
        """Softmax coordinates for learned weights, logits for the means."""
        free = {} if self.uniform_weights else {"weights": charts.Simplex}
        return {**free, "means": charts.Probability}

    def check_data(self, X) -> None:
        if self.missing_values:
            X = X[~np.isnan(X)]
            if X.size == 0:
                return
        low, high = X.min(), X.max()
        if low < 0 or high > 1:
            raise ValueError(
                "A Bernoulli mixture needs binary data with values in [0, 1], but X "
                f"has values in [{low:g}, {high:g}]; binarize it first (e.g. X > t)"
            )

    def log_component_density(self, params: BernoulliParams, X: Array) -> Array:
        r"""log p(x_n | θ_k) for every sample and component, shape (N, K).

        Two matrix products, :math:`X \log θᵀ + (1 − X) \log(1 − θ)ᵀ`, with
        0 · log 0 = 0 exactly: a mean of 0 (or 1) contributes nothing where
        x_d = 0 (or 1) and makes the density zero (log −inf) wherever the data
        disagree, never NaN.
        """
        means = params.means
        if self.missing_values:
            # Observed bits only: a missing entry is neither on nor off.
            X, observed = split_missing(X)
            off = observed.astype(X.dtype) - X
        else:
            off = 1 - X
        log_on = safe_log(means, means > 0)
        log_off = safe_log(1 - means, means < 1)
        on = X @ log_on.T + off @ log_off.T
        impossible = X @ (means <= 0).T.astype(X.dtype) + off @ (means >= 1).T.astype(
            X.dtype
        )
        return jnp.where(impossible > 0, -jnp.inf, on)

    def statistics(self, params, X: Array, resp: Array) -> BernoulliStats:
        """Counts and responsibility-weighted sums.

        ``params`` is not needed for complete data; with missing values a
        missing bit counts as its expected value θ_kd under ``params``:
        Σ_n r_nk x̂_nkd = Σ_{n: x_nd observed} r_nk x_nd + θ_kd Σ_{n: missing} r_nk.
        """
        if self.missing_values:
            values, observed = split_missing(X)
            guesses = params.means * missing_counts(observed, resp)
            return BernoulliStats(jnp.sum(resp, axis=0), resp.T @ values + guesses)
        del params
        return BernoulliStats(jnp.sum(resp, axis=0), resp.T @ X)

    def expected_log_density(self, params, reference, X: Array) -> Array:
        r"""E[log p(x | θ_k)] with each missing bit ~ Bernoulli(θ_old,kd), (N, K).

        Linear in the bits: the log density at the completed x̂_nk (missing
        bits replaced by ``reference``'s θ_kd).
        """
        if not self.missing_values:
            return self.log_component_density(params, X)
        values, observed = split_missing(X)
        guesses = jax.lax.stop_gradient(reference.means)
        filled = completed(values, observed, guesses)
        means = params.means
        log_on = safe_log(means, means > 0)
        log_off = safe_log(1 - means, means < 1)
        return jnp.einsum("nkd,kd->nk", filled, log_on) + jnp.einsum(
            "nkd,kd->nk", 1 - filled, log_off
        )

    def m_step(self, stats: BernoulliStats, params) -> BernoulliParams:
        r"""Closed-form (MAP) M-step.

        .. math::
            π_k = \frac{N_k + α_k − 1}{N + Σ_j α_j − K}, \qquad
            θ_{kd} = \frac{Σ_n r_{nk} x_{nd} + a − 1}{N_k + a + b − 2}

        which is maximum likelihood (π_k = N_k / N, θ_kd = Σ_n r_nk x_nd / N_k)
        when there is no prior, i.e. α = 1 and a = b = 1.
        """
        del params
        counts = guarded_counts(stats.counts)
        if self.mean_prior is None:
            means = stats.sums / counts[:, None]
        else:
            a, b = self.mean_prior
            means = (stats.sums + a - 1) / (counts[:, None] + a + b - 2)
        # Round-off (or fractional data) must not push a mean out of [0, 1].
        means = jnp.clip(means, 0, 1)
        weights = update_weights_map(
            counts, self.weight_concentration, self.uniform_weights
        )
        return BernoulliParams(weights, means)

    def log_prior(self, params: BernoulliParams) -> Array:
        r"""Log prior density of the parameters, normalised.

        .. math::
            \log \mathrm{Dir}(π \mid α) + Σ_{k,d} \log \mathrm{Beta}(θ_{kd} \mid a, b)

        with 0 · log 0 = 0; zero for maximum likelihood.
        """
        dtype = params.means.dtype
        total = log_dirichlet(
            params.weights, self.weight_concentration, self.uniform_weights
        )
        if self.mean_prior is not None:
            a, b = (
                jnp.broadcast_to(jnp.asarray(v, dtype), params.means.shape)
                for v in self.mean_prior
            )
            total = total + jnp.sum(
                xlogy(a - 1, params.means)
                + xlog1py(b - 1, -params.means)
                - betaln(a, b)
            )
        return total
