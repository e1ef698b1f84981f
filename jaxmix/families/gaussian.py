"""Gaussian mixture family: full, tied, diagonal and spherical covariances."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmix.families import charts, covariance_kernels, mixing
from jaxmix.families import fixed as fixing
from jaxmix.families.base import Family, static
from jaxmix.families.missing import split_missing
from jaxmix.families.mixing import (
    guarded_counts,
    log_dirichlet,
    update_weights_map,
)

Array = jax.Array


def _observed_log_density(maha: Array, log_det: Array, observed: Array) -> Array:
    """log N(x_o | μ_k,o, Σ_k,oo) (N, K) from its Mahalanobis term and ½ log|Σ_oo⁻¹|."""
    n_observed = jnp.sum(observed, axis=1, dtype=maha.dtype)[:, None]
    return -0.5 * (n_observed * math.log(2 * math.pi) + maha) + log_det


class GaussianParams(NamedTuple):
    """Parameters of a Gaussian mixture, in scikit-learn's shapes."""

    weights: Array  # (K,)
    means: Array  # (K, D)
    covariances: Array  # full (K, D, D) | tied (D, D) | diag (K, D) | spherical (K,)


class GaussianStats(NamedTuple):
    """Additive sufficient statistics, centred at the current means ``c_k``.

    Sums over samples (and so over chunks or devices) of responsibility-weighted
    quantities; ``second`` depends on the covariance type (see ``_covariance``).
    """

    counts: Array  # (K,)  Σ_n r_nk
    sums: Array  # (K, D)  Σ_n r_nk (x_n − c_k)
    second: Any  # centred second moments, per covariance type


_NIW_FIELDS = ("mean_prior", "mean_precision", "degrees_of_freedom", "covariance_prior")
_PRIOR_FIELDS = ("weight_concentration", *_NIW_FIELDS)


class Gaussian(Family):
    r"""Specification of a Gaussian mixture family.

    The covariance type and whether weights are learned are static (they change
    shapes or branches); ``reg_covar``, ``variance`` and the priors are traced
    pytree leaves, so changing them does not recompile a jitted fit (turning a
    prior on or off does).

    **Priors (MAP-EM).** With no prior the M-step is maximum likelihood. A
    Dirichlet(α) prior on the weights and a normal-inverse-Wishart prior on the
    means and covariances turn it into the MAP M-step, and the engine's
    objective into the mean log-likelihood plus ``log_prior / N``. In the
    notation m₀ = ``mean_prior``, κ₀ = ``mean_precision``, ν₀ =
    ``degrees_of_freedom`` and Ψ₀ = ``covariance_prior`` the prior is

    - ``full``: μ_k | Σ_k ~ N(m₀, Σ_k / κ₀) and Σ_k ~ IW(Ψ₀, ν₀), with density
      ∝ |Σ|^{−(ν₀+D+1)/2} exp(−½ tr(Ψ₀ Σ⁻¹)); Ψ₀ is (D, D);
    - ``tied``: μ_k | Σ ~ N(m₀, Σ / κ₀) for every k and one Σ ~ IW(Ψ₀, ν₀);
    - ``diag``: the same prior restricted to diagonal Σ_k, i.e. independently per
      feature μ_kd | σ²_kd ~ N(m₀d, σ²_kd / κ₀) and
      σ²_kd ~ InvGamma((ν₀ + D − 1)/2, ψ_d / 2); Ψ₀ = diag(ψ) is given as (D,);
    - ``spherical``: restricted to Σ_k = σ²_k I, i.e. μ_k | σ²_k ~ N(m₀, σ²_k I/κ₀)
      and σ²_k ~ InvGamma(D(ν₀ + D + 1)/2 − 1, Dψ/2); Ψ₀ = ψ I is given as a
      scalar ψ.

    The restrictions keep the prior modes of the covariances equal,
    Ψ₀ / (ν₀ + D + 1), whatever the covariance type. ``covariance_prior`` is the
    inverse-Wishart scale Ψ₀, which is what scikit-learn's
    ``BayesianGaussianMixture`` calls ``covariance_prior`` (the inverse of the
    Wishart scale of the precisions). The four NIW numbers are given together
    or not at all; the estimator fills the ones a user leaves out with
    scikit-learn's defaults (κ₀ = 1, m₀ the data mean, ν₀ = D, Ψ₀ the data
    covariance); the family itself only takes concrete values.

    Args:
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      reg_covar: non-negative value added to every covariance diagonal.
      variance: if given, a fixed, known isotropic variance σ²: covariances are
        σ²·I (in the shape of ``covariance_type``) and are not learned.
      uniform_weights: if True the weights stay at 1/K.
      weight_concentration: Dirichlet α, a scalar or (K,), entries ≥ 1 for
        the MAP weights to lie on the simplex; None for maximum likelihood.
      mean_prior: m₀, shape (D,).
      mean_precision: κ₀ > 0.
      degrees_of_freedom: ν₀ > D − 1.
      covariance_prior: Ψ₀: (D, D) symmetric positive definite for ``full``
        and ``tied``, (D,) positive for ``diag``, a positive scalar for
        ``spherical``.

    Examples:
      >>> import jaxmix
      >>> family = jaxmix.families.Gaussian("diag", reg_covar=1e-6)
      >>> family.covariance_type
      'diag'
      >>> import numpy as np
      >>> map_family = jaxmix.families.Gaussian(
      ...     "spherical", weight_concentration=2.0, mean_prior=np.zeros(2),
      ...     mean_precision=1.0, degrees_of_freedom=2.0, covariance_prior=1.0)
    """

    params_type = GaussianParams
    location_field = "means"
    centred_fit = True
    fixable_fields = ("means", "covariances")
    prior_fields = ("weight_concentration", "covariance_prior")
    # An empty component's mean is the centring point, its covariance reg_covar.
    finite_empty_components = True

    covariance_type: str = static("full")
    reg_covar: Any = 1e-6
    variance: Any = None
    uniform_weights: bool = static(False)
    weight_concentration: Any = None
    mean_prior: Any = None
    mean_precision: Any = None
    degrees_of_freedom: Any = None
    covariance_prior: Any = None
    missing_values: bool = static(False)

    def __post_init__(self):
        covariance_kernels.check_settings(self.covariance_type, self.reg_covar)
        if isinstance(self.variance, (int, float)) and not self.variance > 0:
            raise ValueError(f"variance must be positive, got {self.variance}")
        given = [name for name in _NIW_FIELDS if getattr(self, name) is not None]
        if given and len(given) != len(_NIW_FIELDS):
            missing = [name for name in _NIW_FIELDS if name not in given]
            raise ValueError(
                "The normal-inverse-Wishart prior needs mean_prior, mean_precision, "
                f"degrees_of_freedom and covariance_prior together; missing {missing}"
            )
        if given and self.variance is not None:
            raise ValueError(
                "A fixed variance cannot have a prior on the covariances; drop "
                "either variance or the normal-inverse-Wishart prior"
            )

    @property
    def kernel(self):
        return covariance_kernels.KERNELS[self.covariance_type]

    @property
    def label(self) -> str:
        """The covariance type, which names the model in selection tables."""
        return self.covariance_type

    @property
    def has_covariance_prior(self) -> bool:
        """Whether the means and covariances have a normal-inverse-Wishart prior."""
        return self.covariance_prior is not None

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters, as counted for BIC and AIC."""
        count = n_components * n_features
        if self.variance is None:
            count += self.kernel.n_parameters(n_components, n_features)
        if not self.uniform_weights:
            count += n_components - 1
        return count

    def charts(self):
        """Softmax weights, scaled means, and the covariance kernel's chart."""
        free = {} if self.uniform_weights else {"weights": charts.Simplex}
        free["means"] = charts.Location
        if self.variance is None:
            free["covariances"] = self.kernel.chart
        return free

    def precisions_cholesky(self, params: GaussianParams) -> Array:
        return self.kernel.precisions_cholesky(params.covariances)

    def log_component_density(self, params: GaussianParams, X: Array) -> Array:
        r"""log N(x_n | μ_k, Σ_k) for every sample and component, shape (N, K).

        Through the precision Cholesky factor U_k: the log-determinant is
        Σ_d log U_k,dd and the Mahalanobis term ‖(x − μ_k)ᵀ U_k‖².
        """
        n_features = params.means.shape[-1]
        prec_chol = self.precisions_cholesky(params)
        if self.missing_values:
            return self._observed_log_density(params, prec_chol, X)
        origin = jnp.einsum("k,kd->d", params.weights, params.means)
        maha = self.kernel.mahalanobis(X, params.means, prec_chol, origin)
        log_det = self.kernel.log_det_precision_cholesky(prec_chol, n_features)
        return -0.5 * (n_features * math.log(2 * math.pi) + maha) + log_det

    def _observed_log_density(self, params, prec_chol, X):
        r"""log N(x_o | μ_k,o, Σ_k,oo) over each sample's observed features o.

        The Mahalanobis term and log-determinant of the observed block come
        from the precision and the missing block (see the kernels' missing
        values section); a sample with nothing observed has density 1.
        """
        values, observed = split_missing(X)
        maha, log_det = self.kernel.missing_mahalanobis(
            values, observed, params.means, prec_chol
        )
        return _observed_log_density(maha, log_det, observed)

    def posterior_statistics(self, params: GaussianParams, X: Array, weights: Array):
        """The E-step and the statistics of a block (see :class:`Family`).

        With missing values, each block of rows is conditioned on its observed
        features once, for both the density and the completed statistics.
        """
        if not self.missing_values:
            return super().posterior_statistics(params, X, weights)

        def responsibilities(maha, log_det, observed, weights):
            log_density = _observed_log_density(maha, log_det, observed)
            resp, log_norm = mixing.posterior(log_density, params.weights)
            return resp * weights[:, None], jnp.sum(weights * log_norm)

        values, observed = split_missing(X)
        counts, sums, second, total = self.kernel.missing_posterior_moments(
            values,
            observed,
            weights,
            responsibilities,
            params.means,
            self.precisions_cholesky(params),
        )
        return GaussianStats(counts, sums, second), total

    def expected_log_density(self, params, reference, X: Array) -> Array:
        r"""E[log N(x | μ_k, Σ_k)] over x_m ~ p(x_m | x_o, k, θ_old), (N, K).

        With x̂_nk and C_nk the conditional mean and covariance of the
        missing entries under component k of ``reference`` (θ_old),

        .. math::
            E[\log N(x; μ_k, Σ_k)] = \log N(x̂_{nk}; μ_k, Σ_k)
                − ½ \mathrm{tr}(Σ_k^{-1} C_{nk}),

        the per-sample term of Q(θ | θ_old) that the missing-data M-step
        maximises; the log density itself for complete data.
        """
        if not self.missing_values:
            return self.log_component_density(params, X)
        reference = jax.lax.stop_gradient(reference)
        values, observed = split_missing(X)
        completed, cond_cov = self.kernel.conditional_moments(
            values,
            observed,
            reference.means,
            self.kernel.precisions_cholesky(reference.covariances),
        )
        n_features = params.means.shape[-1]
        prec_chol = self.precisions_cholesky(params)
        maha = self.kernel.expected_mahalanobis(
            completed, cond_cov, params.means, prec_chol
        )
        log_det = self.kernel.log_det_precision_cholesky(prec_chol, n_features)
        return -0.5 * (n_features * math.log(2 * math.pi) + maha) + log_det

    def translate(self, params: GaussianParams, offset: Array):
        """The same model in coordinates moved by ``offset`` (x ↦ x + offset).

        The engine fits in data coordinates centred at the data's mean, so means
        keep their relative precision in float32 far from the origin; every
        location (the means and, for MAP, the prior mean) moves with the data.
        """
        family = self
        if self.mean_prior is not None:
            family = dataclasses.replace(self, mean_prior=self.mean_prior + offset)
        return family, params._replace(means=params.means + offset)

    def reference(self, X: Array, resp: Array) -> GaussianParams:
        """Parameters to centre the statistics at when there are none yet."""
        if self.missing_values:
            return super().reference(X, resp)
        counts = guarded_counts(jnp.sum(resp, axis=0))
        means = (resp.T @ X) / counts[:, None]
        n_components, n_features = means.shape
        covariances = self.kernel.fill(1.0, n_components, n_features, X.dtype)
        return GaussianParams(counts / jnp.sum(counts), means, covariances)

    def statistics(
        self, params: GaussianParams, X: Array, resp: Array
    ) -> GaussianStats:
        """Sufficient statistics of weighted responsibilities, centred at the means.

        With missing values, each sample is completed per component by the
        conditional mean x̂_nk of its missing entries, and the conditional
        covariance C_nk is added to its second moments:
        Σ_n r_nk (x̂_nk − μ_k) and Σ_n r_nk [(x̂_nk − μ_k)(x̂_nk − μ_k)ᵀ + C_nk]
        (diagonal for ``diag`` and ``spherical``: σ²_kd on missing features).
        """
        shift = params.means
        if self.missing_values:
            values, observed = split_missing(X)
            sums, second = self.kernel.missing_second_moments(
                values, observed, resp, shift, self.precisions_cholesky(params)
            )
            return GaussianStats(jnp.sum(resp, axis=0), sums, second)
        sums, second = self.kernel.second_moments(X, resp, shift)
        return GaussianStats(jnp.sum(resp, axis=0), sums, second)

    def m_step(self, stats: GaussianStats, params: GaussianParams) -> GaussianParams:
        r"""Closed-form (MAP) M-step from the statistics.

        Maximum likelihood (no prior):

        .. math::
            π_k = N_k / N, \quad μ_k = x̄_k = Σ_n r_nk x_n / N_k, \quad
            Σ_k = S_k / N_k + \text{reg}·I,

        with the scatter :math:`S_k = Σ_n r_nk (x_n − x̄_k)(x_n − x̄_k)ᵀ` (tied:
        one Σ = Σ_k S_k / N; diag keeps the diagonal; spherical averages it over
        features).

        MAP, with a Dirichlet(α) prior on the weights and the normal-inverse-
        Wishart prior (m₀, κ₀, ν₀, Ψ₀) of the class docstring, writing
        :math:`c_k = κ₀ N_k / (κ₀ + N_k)` and :math:`d_k = x̄_k − m₀`:

        .. math::
            π_k = \frac{N_k + α_k − 1}{N + Σ_j α_j − K}, \qquad
            μ_k = \frac{N_k x̄_k + κ₀ m₀}{N_k + κ₀},

        - full: :math:`Σ_k = \frac{Ψ₀ + S_k + c_k d_k d_kᵀ}{ν₀ + N_k + D + 2}`
          (the joint mode of the NIW posterior);
        - tied: :math:`Σ = \frac{Ψ₀ + Σ_k (S_k + c_k d_k d_kᵀ)}{ν₀ + N + D + 1 + K}`;
        - diag: :math:`σ²_{kd} = \frac{ψ_d + S_{k,dd} + c_k d_{kd}²}{ν₀ + N_k + D + 2}`;
        - spherical: :math:`σ²_k = \frac{Dψ + \mathrm{tr} S_k + c_k ‖d_k‖²}
          {D (ν₀ + N_k + D + 2)}`;

        each plus reg·I. ``params`` supplies the centring shift ``c_k`` the
        statistics were taken around.
        """
        counts = guarded_counts(stats.counts)
        delta = stats.sums / counts[:, None]
        shift = params.means
        n_components, n_features = shift.shape
        total = jnp.sum(counts)
        if self.has_covariance_prior:
            kappa = self.mean_precision
            pull = stats.sums + kappa * (self.mean_prior - shift)
            means = shift + pull / (counts + kappa)[:, None]
        else:
            means = shift + delta
        if self.variance is not None:
            covariances = self.kernel.fill(
                self.variance, n_components, n_features, means.dtype
            )
        elif self.has_covariance_prior:
            scatter_cov = self.kernel.covariances(
                stats.second, counts, delta, total, 0.0, shift
            )
            deviation = (shift - self.mean_prior) + delta
            shrink = kappa * counts / (kappa + counts)
            covariances = self.kernel.map_covariances(
                scatter_cov,
                counts,
                deviation,
                total,
                shrink,
                self.covariance_prior,
                self.degrees_of_freedom,
            ) + self.kernel.fill(self.reg_covar, n_components, n_features, means.dtype)
        else:
            covariances = self.kernel.covariances(
                stats.second, counts, delta, total, self.reg_covar, shift
            )
        weights = update_weights_map(
            counts, self.weight_concentration, self.uniform_weights
        )
        return GaussianParams(weights, means, covariances)

    def check_fixed(self, fixed: GaussianParams) -> None:
        """Fixed means and covariances must follow the covariance's coupling.

        With ``full`` or ``tied`` covariances a component's mean is fixed as a
        whole (a partly fixed mean couples its free entries to the
        covariance) and so is each covariance matrix; ``diag`` and
        ``spherical`` fix any entries.
        """
        super().check_fixed(fixed)
        if self.kernel.diagonal:
            return
        name = f"Gaussian(covariance_type={self.covariance_type!r})"
        if not fixing.constant_over(fixed.means, (1,)):
            raise ValueError(
                f"{name} can hold a component's mean fixed only as a whole (all "
                "its features): the free entries of a partly fixed mean are "
                "coupled to the covariance. Fix whole rows of 'means', or use "
                "covariance_type 'diag' or 'spherical'"
            )
        if not fixing.constant_over(fixed.covariances, (-2, -1)):
            raise ValueError(
                f"{name} can hold a covariance matrix fixed only as a whole, not "
                "some of its entries"
            )

    def constrained_m_step(
        self, stats: GaussianStats, params: GaussianParams, fixed: GaussianParams
    ) -> GaussianParams:
        r"""The (MAP) M-step with the entries of ``fixed`` held at ``params``.

        Free means are the unconstrained ones (their maximiser does not depend
        on the covariances, with or without the normal-inverse-Wishart
        prior); fixed entries of any field are kept bit for bit, and the free
        weights share the mass the fixed ones leave (:meth:`hold_fixed`). A
        free covariance is centred at its component's mean μ_k, fixed or free:
        maximum likelihood gives

        .. math::
            Σ_k = \frac{1}{N_k} Σ_n r_{nk} (x_n − μ_k)(x_n − μ_k)ᵀ + \text{reg}·I

        (tied: Σ_k Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ / N; diag and spherical
        entry by entry), and MAP, with :math:`S_k(μ_k)` the scatter around μ_k,

        .. math::
            Σ_k = \frac{Ψ₀ + S_k(μ_k) + κ₀ (μ_k − m₀)(μ_k − m₀)ᵀ}{ν₀ + N_k + D + 2}

        (tied, diag, spherical: the denominators of :meth:`m_step`). For a free
        mean, :math:`S_k(μ_k) + κ₀ (μ_k − m₀)(μ_k − m₀)ᵀ = S_k + c_k d_k d_kᵀ`:
        the joint mode of :meth:`m_step`. The statistics are centred at the
        current means, which for a fixed mean are its fixed value, so its
        covariance is the centred second moment over N_k.
        """
        free = self.m_step(stats, params)
        if self.variance is not None:
            return self.hold_fixed(free, params, fixed)
        counts = guarded_counts(stats.counts)
        delta = stats.sums / counts[:, None]
        # The covariance's centre relative to the statistics' shift: zero for
        # a fixed mean (the shift), the weighted mean's offset for a free one.
        move = jnp.where(fixed.means, 0, delta)
        shift = params.means
        n_components, n_features = shift.shape
        total = jnp.sum(counts)
        if self.has_covariance_prior:
            kappa = self.mean_precision
            scatter_cov = self.kernel.covariances(
                stats.second, counts, move, total, 0.0, shift
            )
            # The prior's pull c_k d_kᵀd_k for a free mean, κ₀ (μ − m₀)ᵀ(μ − m₀)
            # for a fixed one, entry by entry as sqrt(weight)·deviation.
            offset = shift - self.mean_prior
            shrink = kappa * counts / (kappa + counts)
            weight = jnp.where(fixed.means, kappa, shrink[:, None])
            deviation = jnp.sqrt(weight) * jnp.where(
                fixed.means, offset, offset + delta
            )
            covariances = self.kernel.map_covariances(
                scatter_cov,
                counts,
                deviation,
                total,
                jnp.ones_like(counts),
                self.covariance_prior,
                self.degrees_of_freedom,
            ) + self.kernel.fill(self.reg_covar, n_components, n_features, shift.dtype)
        else:
            covariances = self.kernel.covariances(
                stats.second, counts, move, total, self.reg_covar, shift
            )
        return self.hold_fixed(free._replace(covariances=covariances), params, fixed)

    def log_prior(self, params: GaussianParams) -> Array:
        r"""Log prior density of the parameters, normalised (zero for ML).

        :math:`\log \mathrm{Dir}(π | α)` plus, with the normal-inverse-Wishart
        prior, :math:`Σ_k \log N(μ_k | m₀, Σ_k/κ₀) + \log IW(Σ_k | Ψ₀, ν₀)`
        (or its tied, diagonal or spherical form of the class docstring).
        """
        total = log_dirichlet(
            params.weights, self.weight_concentration, self.uniform_weights
        )
        if self.has_covariance_prior:
            total = total + self.kernel.log_prior(
                params.means,
                params.covariances,
                self.precisions_cholesky(params),
                self.mean_prior,
                self.mean_precision,
                self.covariance_prior,
                self.degrees_of_freedom,
            )
        return total
