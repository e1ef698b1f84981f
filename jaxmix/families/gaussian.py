"""Gaussian mixture family: full, tied, diagonal and spherical covariances."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmix.families import _covariance
from jaxmix.families._weights import guarded_counts, update_weights

Array = jax.Array


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


@dataclasses.dataclass(frozen=True)
class Gaussian:
    r"""Specification of a Gaussian mixture family.

    The covariance type and whether weights are learned are static (they change
    shapes or branches); ``reg_covar`` and ``variance`` are traced pytree leaves,
    so changing them does not recompile a jitted fit.

    Args:
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      reg_covar: non-negative value added to every covariance diagonal.
      variance: if given, a fixed, known isotropic variance σ²: covariances are
        σ²·I (in the shape of ``covariance_type``) and are not learned.
      uniform_weights: if True the weights stay at 1/K.

    Examples:
      >>> import jaxmix
      >>> family = jaxmix.families.Gaussian("diag", reg_covar=1e-6)
      >>> family.covariance_type
      'diag'
    """

    covariance_type: str = "full"
    reg_covar: Any = 1e-6
    variance: Any = None
    uniform_weights: bool = False

    def __post_init__(self):
        if self.covariance_type not in _covariance.KERNELS:
            raise ValueError(
                f"covariance_type must be one of {_covariance.COVARIANCE_TYPES}, "
                f"got {self.covariance_type!r}"
            )
        if isinstance(self.reg_covar, (int, float)) and not self.reg_covar >= 0:
            raise ValueError(f"reg_covar must be non-negative, got {self.reg_covar}")
        if isinstance(self.variance, (int, float)) and not self.variance > 0:
            raise ValueError(f"variance must be positive, got {self.variance}")

    @property
    def kernel(self):
        return _covariance.KERNELS[self.covariance_type]

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters, as counted for BIC and AIC."""
        count = n_components * n_features
        if self.variance is None:
            count += self.kernel.n_parameters(n_components, n_features)
        if not self.uniform_weights:
            count += n_components - 1
        return count

    def precisions_cholesky(self, params: GaussianParams) -> Array:
        return self.kernel.precisions_cholesky(params.covariances)

    def log_component_density(self, params: GaussianParams, X: Array) -> Array:
        r"""log N(x_n | μ_k, Σ_k) for every sample and component, shape (N, K).

        Through the precision Cholesky factor U_k: the log-determinant is
        Σ_d log U_k,dd and the Mahalanobis term ‖(x − μ_k)ᵀ U_k‖².
        """
        n_features = params.means.shape[-1]
        prec_chol = self.precisions_cholesky(params)
        origin = jnp.einsum("k,kd->d", params.weights, params.means)
        maha = self.kernel.mahalanobis(X, params.means, prec_chol, origin)
        log_det = self.kernel.log_det_precision_cholesky(prec_chol, n_features)
        return -0.5 * (n_features * math.log(2 * math.pi) + maha) + log_det

    def translate(self, params: GaussianParams, offset: Array):
        """The same model in coordinates moved by ``offset`` (x ↦ x + offset).

        The engine fits in data coordinates centred at the data's mean, so means
        keep their relative precision in float32 far from the origin; every
        location (the means and, for MAP, the prior mean) moves with the data.
        """
        family = self
        if getattr(self, "mean_prior", None) is not None:
            family = dataclasses.replace(self, mean_prior=self.mean_prior + offset)
        return family, params._replace(means=params.means + offset)

    def reference(self, X: Array, resp: Array) -> GaussianParams:
        """Parameters to centre the statistics at when there are none yet."""
        counts = guarded_counts(jnp.sum(resp, axis=0))
        means = (resp.T @ X) / counts[:, None]
        n_components, n_features = means.shape
        covariances = self.kernel.fill(1.0, n_components, n_features, X.dtype)
        return GaussianParams(counts / jnp.sum(counts), means, covariances)

    def statistics(self, params: GaussianParams, X: Array, resp: Array) -> GaussianStats:
        """Sufficient statistics of (weighted) responsibilities, centred at the means."""
        shift = params.means
        sums, second = self.kernel.second_moments(X, resp, shift)
        return GaussianStats(jnp.sum(resp, axis=0), sums, second)

    def m_step(self, stats: GaussianStats, params: GaussianParams) -> GaussianParams:
        r"""Closed-form M-step from the statistics.

        .. math::
            π_k = N_k / N, \quad μ_k = Σ_n r_nk x_n / N_k, \quad
            Σ_k = Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ / N_k + \text{reg}·I

        (tied: one Σ = Σ_k Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ / N; diag keeps the
        diagonal; spherical averages it over features.) ``params`` supplies the
        centring shift ``c_k`` the statistics were taken around.
        """
        counts = guarded_counts(stats.counts)
        delta = stats.sums / counts[:, None]
        means = params.means + delta
        n_components, n_features = means.shape
        if self.variance is None:
            covariances = self.kernel.covariances(
                stats.second,
                counts,
                delta,
                jnp.sum(counts),
                self.reg_covar,
                params.means,
            )
        else:
            covariances = self.kernel.fill(
                self.variance, n_components, n_features, means.dtype
            )
        weights = update_weights(counts, self.uniform_weights)
        return GaussianParams(weights, means, covariances)

    def log_prior(self, params: GaussianParams) -> Array:
        """Log prior density of the parameters (zero: maximum likelihood)."""
        return jnp.zeros((), params.means.dtype)


jax.tree_util.register_dataclass(
    Gaussian,
    data_fields=["reg_covar", "variance"],
    meta_fields=["covariance_type", "uniform_weights"],
)
