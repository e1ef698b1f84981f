r"""Mixture of factor analysers (and of probabilistic PCA), fitted by AECM.

Component k generates :math:`x = μ_k + Λ_k z + ε` with :math:`z \sim N(0, I_q)`
and :math:`ε \sim N(0, Ψ_k)`, :math:`Ψ_k` diagonal, so that

.. math::
    x \mid k \sim N(μ_k, Σ_k), \qquad Σ_k = Λ_k Λ_kᵀ + Ψ_k .

The loadings :math:`Λ_k` are (D, q) with q < D factors. The noise is chosen
by the static ``noise_type``: ``"diag"`` (one diagonal :math:`Ψ_k` per
component), ``"tied_diag"`` (one diagonal Ψ shared by all components) or
``"isotropic"`` (:math:`Ψ_k = σ_k² I`: a mixture of probabilistic PCA).

**Nothing D×D.** With :math:`M_k = I_q + Λ_kᵀ Ψ_k^{-1} Λ_k` (q×q), the
Woodbury identity and the matrix determinant lemma give

.. math::
    Σ_k^{-1} = Ψ_k^{-1} − Ψ_k^{-1} Λ_k M_k^{-1} Λ_kᵀ Ψ_k^{-1}, \qquad
    \log|Σ_k| = \log|M_k| + Σ_d \log ψ_{kd},

and the posterior of the factors is
:math:`z \mid x, k \sim N(m, M_k^{-1})` with
:math:`m = M_k^{-1} Λ_kᵀ Ψ_k^{-1} (x − μ_k)`. The Mahalanobis term is
evaluated as a sum of non-negative terms,

.. math::
    (x − μ_k)ᵀ Σ_k^{-1} (x − μ_k) = Σ_d e_d² / ψ_{kd} + ‖m‖², \qquad
    e = x − μ_k − Λ_k m,

rather than as the difference :math:`‖Ψ^{-1/2}(x − μ)‖² − mᵀ M m`, which
cancels when the factors dominate the noise. Every E-step, statistic and
log density costs O(N·K·D·q); only q×q matrices are factored (by a
Cholesky factorisation written in XLA operations, as the Gaussian kernels do).

**The algorithm: AECM** (alternating expectation-conditional maximisation,
Meng & van Dyk 1997; for this model McLachlan, Peel & Bean 2003). One
iteration has one pass over the data, which gives the responsibilities
:math:`r_{nk}` and the factor posteriors at the current parameters θ:

1. Weights and means: :math:`π_k = N_k / N` and
   :math:`μ_k' = \bar x_k = Σ_n r_{nk} x_n / N_k`. Given Σ_k, these
   maximise :math:`G(θ) = Σ_{nk} r_{nk} [\log π_k + \log N(x_n | μ_k, Σ_k)]`
   exactly (the marginal of x is Gaussian).
2. Loadings and noise, with the factors as missing data, at the posterior of
   z under (μ', Λ, Ψ): posterior means :math:`m_n' = β_k (x_n − μ_k')` with
   :math:`β_k = M_k^{-1} Λ_kᵀ Ψ_k^{-1}`, posterior covariance
   :math:`V_k = M_k^{-1}`. With the weighted moments
   :math:`C_{mm} = Σ_n r_{nk} m_n' m_n'ᵀ / N_k` and
   :math:`C_{xm} = Σ_n r_{nk} (x_n − μ_k') m_n'ᵀ / N_k`,

   .. math::
       Λ_k' = C_{xm} (V_k + C_{mm})^{-1}, \qquad
       ψ_{kd}' = \frac{1}{N_k} Σ_n r_{nk}
           E\big[(x_{nd} − μ_{kd}' − (Λ_k' z)_d)² \big]

   (tied: the N_k-weighted mean of the ψ_k'; isotropic: the mean over
   features), plus ``reg_covar``.

The second cycle's posterior is at the *new* means, which is what makes it
AECM rather than the one-cycle ECM of Ghahramani & Hinton (1996); it costs no
second pass, because m' is m shifted by a constant: with statistics taken
around the current means, :math:`m_n' = m_n − \bar m_k`. Each cycle raises
G (the first maximises it in (π, μ), the second maximises a lower bound of
G that touches it at the intermediate point), and G touches the
log-likelihood at θ, so the log-likelihood never decreases.

**Float32.** The statistics are sums around the current means and loadings:
the residuals :math:`e_n = x_n − μ_k − Λ_k m_n` under the current loadings
are accumulated, and the new loadings enter as the (small, near convergence)
step :math:`Δ_k = Λ_k' − Λ_k = (C_{em} − Λ_k V_k)(V_k + C_{mm})^{-1}`. The
noise update is then

.. math::
    ψ_{kd}' = \big[E_2 − 2 Δ C_{em}ᵀ + Δ C_{mm} Δᵀ + Λ' V Λ'ᵀ\big]_{dd},

each term of the order of the noise, never the difference
:math:`\mathrm{diag}(S − Λ' β S)` of two numbers of the order of the data's
variance. The fit is done in coordinates centred at the data's mean
(``centred_fit``).

**The reference point.** The M-step above raises G without maximising it
(there is no closed-form maximiser of the factor-analysis likelihood), so
:meth:`FactorAnalyzer.reference`, the params for given responsibilities, runs
the same updates with the responsibilities held fixed, accelerated by
SQUAREM, until they stop moving (at most ``reference_steps`` cycles of five
passes over the data): its result is a weighted maximum-likelihood fit of
every component, the start of a fit and the point
:func:`jaxmix.check.check_m_step` examines. There the family's M-step is
checked to be a stationary point of G: the fixed points of the updates are
the weighted maximum-likelihood estimates, which a wrong update misses.

**Not supported**: online EM (:func:`jaxmix.fit_online`). Its running
statistics are all taken at one fixed reference point, while the factor
posteriors in these statistics must be those of the current parameters.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.families import charts
from jaxmix.families.base import Family, static
from jaxmix.families.mixing import guarded_counts, update_weights

Array = jax.Array

_LOG_2PI = math.log(2 * math.pi)
_TINY = 1e-30  # a floor for ‖v‖ in the extrapolation (finite in float32)


class FactorParams(NamedTuple):
    """Parameters of a mixture of factor analysers."""

    weights: Array  # (K,)
    means: Array  # (K, D)
    loadings: Array  # (K, D, q)  Λ_k
    noise_variances: Array  # diag (K, D) | tied_diag (D,) | isotropic (K,)


class FactorStats(NamedTuple):
    """Additive statistics around the current params (μ_k, Λ_k, Ψ_k).

    With :math:`c_n = x_n − μ_k`, the factor posterior means
    :math:`m_n = E[z | x_n, k]` and the residuals :math:`e_n = c_n − Λ_k m_n`,
    all at the current params:
    """

    counts: Array  # (K,)  Σ_n r_nk
    sums: Array  # (K, D)  Σ_n r_nk c_n
    residual_sums: Array  # (K, D)  Σ_n r_nk e_n
    residual_squares: Array  # (K, D)  Σ_n r_nk e_n²
    factor_sums: Array  # (K, q)  Σ_n r_nk m_n
    factor_products: Array  # (K, q, q)  Σ_n r_nk m_n m_nᵀ
    cross: Array  # (K, D, q)  Σ_n r_nk e_n m_nᵀ


class _Posterior(NamedTuple):
    """What the current params give every sample's factor posterior."""

    gain: Array  # (K, D, q)  βᵀ = Ψ⁻¹ Λ M⁻¹: m = (x − μ) @ gain
    covariance: Array  # (K, q, q)  V = M⁻¹
    log_det: Array  # (K,)  log |Σ_k| = log |M_k| + Σ_d log ψ_kd


# ----------------------------------------------------------------------------
# Small q×q factorisations in XLA operations
# ----------------------------------------------------------------------------


def _cholesky(matrix: Array) -> Array:
    """Lower Cholesky factor of SPD (..., q, q) matrices, one column a step.

    Written with XLA operations rather than a LAPACK call: on CPU a batched
    LAPACK call runs on scipy's OpenBLAS threads (see
    :mod:`jaxmix.families.covariance_kernels`), and q is small.
    """
    size = matrix.shape[-1]
    index = jnp.arange(size)

    def factor_column(j, carry):
        trailing, lower = carry
        pivot = jnp.sqrt(trailing[..., j, j])[..., None]
        column = jnp.where(index >= j, trailing[..., :, j] / pivot, 0.0)
        lower = lower + column[..., :, None] * (index == j)
        trailing = trailing - column[..., :, None] * column[..., None, :]
        return trailing, lower

    start = (matrix, jnp.zeros_like(matrix))
    return jax.lax.fori_loop(0, size, factor_column, start)[1]


def _invert_lower(lower: Array) -> Array:
    """L⁻¹ of lower-triangular (..., q, q) matrices by forward substitution."""
    size = lower.shape[-1]
    index = jnp.arange(size)

    def solve_row(i, inverse):
        # Row i of L⁻¹ from L[i, :] · L⁻¹ = e_i; its rows from i on are zero.
        unit = (index == i).astype(lower.dtype)
        rhs = unit - jnp.einsum("...j,...jd->...d", lower[..., i, :], inverse)
        row = rhs / lower[..., i, i][..., None]
        return inverse + row[..., None, :] * unit[:, None]

    return jax.lax.fori_loop(0, size, solve_row, jnp.zeros_like(lower))


def _spd_inverse_and_log_det(matrix: Array) -> tuple[Array, Array]:
    """A⁻¹ = L⁻ᵀ L⁻¹ and log |A| = 2 Σ log L_jj of SPD (..., q, q) matrices."""
    lower = _cholesky(matrix)
    inverse_lower = _invert_lower(lower)
    inverse = jnp.swapaxes(inverse_lower, -1, -2) @ inverse_lower
    # Σ log of the diagonal (not the trace of a log): finite gradients.
    log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(lower, axis1=-2, axis2=-1)), -1)
    return inverse, log_det


def _block_rows(n_components: int, n_features: int, dtype) -> int:
    """Rows per block so that a block's (rows, K, D) intermediates stay in cache.

    About 2 MiB, at least 256 rows, as the engine's blocks (measured at
    N = 20,000, K = 4, D = 256, q = 4 in float32: one pass took 126 ms in
    blocks of 512 rows with the components vmapped, 216 ms with one component
    at a time, 550 ms in one block).
    """
    rows = (1 << 21) // max(1, n_components * n_features * jnp.dtype(dtype).itemsize)
    return max(rows, 256)


def _row_blocks(array: Array, rows: int, n_blocks: int) -> Array:
    """(N, ...) → (n_blocks, rows, ...), padded with copies of the last row."""
    pad = n_blocks * rows - array.shape[0]
    widths = ((0, pad),) + ((0, 0),) * (array.ndim - 1)
    return jnp.pad(array, widths, mode="edge").reshape(n_blocks, rows, *array.shape[1:])


def _over_rows(per_block, X: Array, extra: Array, n_components: int, reduce: bool):
    """``per_block(X_b, extra_b)`` over row blocks of X when N is large.

    ``reduce``: the results are sums (added up; ``extra`` is padded with
    zeros, e.g. responsibilities); otherwise they are per-row arrays,
    concatenated and cut back to N rows.
    """
    n_samples, n_features = X.shape
    rows = _block_rows(n_components, n_features, X.dtype)
    if n_samples <= rows:
        return per_block(X, extra)
    n_blocks = -(-n_samples // rows)
    blocks = _row_blocks(X, rows, n_blocks)
    if not reduce:
        out = jax.lax.map(lambda b: per_block(b, None), blocks)
        return out.reshape(n_blocks * rows, *out.shape[2:])[:n_samples]
    pad = n_blocks * rows - n_samples
    extra = jnp.pad(extra, ((0, pad), (0, 0))).reshape(n_blocks, rows, -1)

    def add(total, block):
        return jax.tree.map(jnp.add, total, per_block(*block)), None

    shapes = jax.eval_shape(per_block, blocks[0], extra[0])
    start = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    return jax.lax.scan(add, start, (blocks, extra))[0]


def _component_terms(X, mean, loading, gain):
    """c = x − μ, m = E[z | x] and e = c − Λ m for one component, by rows."""
    centred = X - mean  # (N, D)
    factors = centred @ gain  # (N, q)
    residual = centred - factors @ loading.T  # (N, D)
    return centred, factors, residual


def _directions(n_features: int, n_factors: int, dtype) -> Array:
    """Fixed generic loading directions (D, q): standard normal, one seed."""
    return jax.random.normal(jax.random.key(0), (n_features, n_factors), dtype)


# ----------------------------------------------------------------------------
# Charts of the loadings and of the shared noise (for the autodiff checks)
# ----------------------------------------------------------------------------


class TiedLogVariance(charts.LogVariance):
    """One positive variance per feature (D,), shared by all components."""

    per_component = False


class Loadings:
    """Loadings (K, D, q) in units of the data's standard deviation, row by row.

    Λ_kdj = s_d u_kdj: every coordinate is dimensionless.
    """

    per_component = True

    @staticmethod
    def to_unconstrained(value: Array, scale: Array) -> Array:
        return value / scale[:, None]

    @staticmethod
    def to_value(coords: Array, scale: Array) -> Array:
        return coords * scale[:, None]

    @staticmethod
    def infeasibility(value: np.ndarray) -> str | None:
        if not np.all(np.isfinite(value)):
            return "contains NaN or infinite values"
        return None


# ----------------------------------------------------------------------------
# Noise types: one small class per type, picked through NOISE_KERNELS
# ----------------------------------------------------------------------------


class _DiagNoise:
    """One diagonal Ψ_k per component, (K, D)."""

    name = "diag"
    chart = charts.LogVariance

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        return (n_components, n_features)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        return n_components * n_features

    @staticmethod
    def per_feature(noise: Array, n_components: int, n_features: int) -> Array:
        """ψ_kd for every component and feature, (K, D)."""
        del n_components, n_features
        return noise

    @staticmethod
    def from_residuals(residuals: Array, counts: Array) -> Array:
        """The maximiser from the per-component mean squared residuals (K, D)."""
        del counts
        return residuals


class _TiedDiagNoise:
    """One diagonal Ψ shared by all components, (D,)."""

    name = "tied_diag"
    chart = TiedLogVariance

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        del n_components
        return (n_features,)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        del n_components
        return n_features

    @staticmethod
    def per_feature(noise: Array, n_components: int, n_features: int) -> Array:
        return jnp.broadcast_to(noise, (n_components, n_features))

    @staticmethod
    def from_residuals(residuals: Array, counts: Array) -> Array:
        # ψ_d = Σ_k N_k ψ_kd / N: the shared maximiser.
        return counts @ residuals / jnp.sum(counts)


class _IsotropicNoise:
    """Ψ_k = σ_k² I: one variance per component, (K,) (probabilistic PCA)."""

    name = "isotropic"
    chart = charts.SphericalLogVariance

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        del n_features
        return (n_components,)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        del n_features
        return n_components

    @staticmethod
    def per_feature(noise: Array, n_components: int, n_features: int) -> Array:
        return jnp.broadcast_to(noise[:, None], (n_components, n_features))

    @staticmethod
    def from_residuals(residuals: Array, counts: Array) -> Array:
        # σ_k² = tr(E[(x − μ − Λz)(…)ᵀ]) / D.
        del counts
        return jnp.mean(residuals, axis=-1)


NOISE_KERNELS = {
    "diag": _DiagNoise,
    "tied_diag": _TiedDiagNoise,
    "isotropic": _IsotropicNoise,
}
NOISE_TYPES = tuple(NOISE_KERNELS)


# ----------------------------------------------------------------------------
# The family
# ----------------------------------------------------------------------------


class FactorAnalyzer(Family):
    r"""Specification of a mixture of factor analysers (see the module docstring).

    ``n_factors`` (q), ``noise_type`` and ``reference_steps`` are static;
    ``reg_covar`` is traced. Maximum likelihood only (no priors).

    Args:
      n_factors: q ≥ 1, the number of factors of every component; q < D.
      noise_type: ``"diag"`` (Ψ_k diagonal, per component), ``"tied_diag"``
        (one diagonal Ψ shared by all components) or ``"isotropic"``
        (Ψ_k = σ_k² I, mixture of probabilistic PCA).
      reg_covar: non-negative value added to every noise variance.
      uniform_weights: if True the weights stay at 1/K.
      reference_steps: at most this many accelerated cycles (five passes
        over the data each) of the updates at fixed responsibilities in
        :meth:`reference`, the start of a fit and the point the M-step checker
        examines; they stop earlier once the updates stop moving.

    Examples:
      >>> import jaxmix
      >>> family = jaxmix.families.FactorAnalyzer(n_factors=2, noise_type="diag")
      >>> family.n_parameters(3, 10)  # 2 + 30 means + 3·(20 − 1) + 30 noise
      119
    """

    params_type = FactorParams
    location_field = "means"
    centred_fit = True
    online_statistics = False  # factor posteriors belong to the current E-step

    n_factors: int = static(1)
    noise_type: str = static("diag")
    reg_covar: Any = 1e-6
    uniform_weights: bool = static(False)
    reference_steps: int = static(100)

    def __post_init__(self):
        if self.noise_type not in NOISE_KERNELS:
            raise ValueError(
                f"noise_type must be one of {NOISE_TYPES}, got {self.noise_type!r}"
            )
        for name in ("n_factors", "reference_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if isinstance(self.reg_covar, (int, float)) and not self.reg_covar >= 0:
            raise ValueError(f"reg_covar must be non-negative, got {self.reg_covar}")

    @property
    def noise(self):
        """The noise type's kernel (shapes, chart, count, update)."""
        return NOISE_KERNELS[self.noise_type]

    @property
    def label(self) -> str:
        """The noise type and the number of factors, for selection tables."""
        return f"factor-{self.noise_type}-q{self.n_factors}"

    def n_parameters(self, n_components: int, n_features: int) -> int:
        r"""Free parameters: K − 1 weights, KD means, K(Dq − q(q−1)/2) loadings
        (Λ_k R is the same model for every orthogonal R) and the noise."""
        q = self.n_factors
        count = n_components * n_features
        count += n_components * (n_features * q - q * (q - 1) // 2)
        count += self.noise.n_parameters(n_components, n_features)
        if not self.uniform_weights:
            count += n_components - 1
        return count

    def charts(self):
        """Softmax weights, scaled means and loadings, log noise variances."""
        free = {} if self.uniform_weights else {"weights": charts.Simplex}
        free["means"] = charts.Location
        free["loadings"] = Loadings
        free["noise_variances"] = self.noise.chart
        return free

    def _check_features(self, n_features: int) -> None:
        if self.n_factors >= n_features:
            raise ValueError(
                "n_factors must be a positive integer below n_features, got "
                f"n_factors = {self.n_factors} with n_features = {n_features}"
            )

    def noise_per_feature(self, params: FactorParams) -> Array:
        """ψ_kd for every component and feature, (K, D)."""
        n_components, n_features = params.means.shape
        return self.noise.per_feature(params.noise_variances, n_components, n_features)

    def posterior(self, params: FactorParams) -> _Posterior:
        r"""Factor posterior quantities from M_k = I + Λ_kᵀ Ψ_k⁻¹ Λ_k (q×q only)."""
        psi = self.noise_per_feature(params)  # (K, D)
        scaled = params.loadings / psi[..., None]  # Ψ⁻¹ Λ, (K, D, q)
        inner = jnp.einsum("kdq,kdr->kqr", scaled, params.loadings)
        eye = jnp.eye(self.n_factors, dtype=inner.dtype)
        covariance, log_det_m = _spd_inverse_and_log_det(eye + inner)
        gain = scaled @ covariance
        log_det = log_det_m + jnp.sum(jnp.log(psi), axis=-1)
        return _Posterior(gain, covariance, log_det)

    def log_component_density(self, params: FactorParams, X: Array) -> Array:
        r"""log N(x_n | μ_k, Λ_kΛ_kᵀ + Ψ_k), (N, K), in O(N·K·D·q).

        :math:`−½[D \log 2π + \log|M_k| + Σ_d \log ψ_{kd} + Σ_d e_d²/ψ_{kd}
        + ‖m‖²]`, with m the factor posterior mean and e the residual.
        """
        n_features = X.shape[1]
        post = self.posterior(params)
        precision = 1.0 / self.noise_per_feature(params)
        components = (params.means, params.loadings, post.gain, precision)

        def one_component(X, mean, loading, gain, noise_precision):
            _, factors, residual = _component_terms(X, mean, loading, gain)
            return jnp.square(residual) @ noise_precision + jnp.sum(
                jnp.square(factors), axis=-1
            )

        def per_block(X, _):
            return jax.vmap(one_component, (None, 0, 0, 0, 0), 1)(X, *components)

        maha = _over_rows(per_block, X, None, params.weights.shape[0], reduce=False)
        return -0.5 * (n_features * _LOG_2PI + post.log_det + maha)

    def statistics(self, params: FactorParams, X: Array, resp: Array) -> FactorStats:
        """Sums over samples of responsibility-weighted factor-posterior moments."""
        post = self.posterior(params)
        components = (params.means, params.loadings, post.gain)

        def one_component(X, resp_k, mean, loading, gain):
            centred, factors, residual = _component_terms(X, mean, loading, gain)
            weighted = factors * resp_k[:, None]
            return FactorStats(
                jnp.sum(resp_k),
                centred.T @ resp_k,
                residual.T @ resp_k,
                jnp.square(residual).T @ resp_k,
                jnp.sum(weighted, axis=0),
                factors.T @ weighted,
                residual.T @ weighted,
            )

        def per_block(X, resp):
            return jax.vmap(one_component, (None, 1, 0, 0, 0))(X, resp, *components)

        return _over_rows(per_block, X, resp, resp.shape[1], reduce=True)

    def m_step(self, stats: FactorStats, params: FactorParams) -> FactorParams:
        r"""One AECM iteration from statistics taken around ``params``.

        Writing :math:`\bar m`, :math:`\bar e` and :math:`δ` for the
        weighted means of m, e and c, and re-centring at the new means
        :math:`μ_k' = μ_k + δ` (where :math:`m' = m − \bar m` and
        :math:`e' = e − \bar e`):

        .. math::
            π_k = N_k / N, \quad
            C_{mm} = \overline{m'm'ᵀ}, \quad C_{em} = \overline{e'm'ᵀ}, \quad
            E_2 = \overline{e'^2}, \\
            Δ = (C_{em} − Λ V)(V + C_{mm})^{-1}, \quad Λ' = Λ + Δ, \\
            ψ' = \mathrm{diag}\big(E_2 − 2 Δ C_{em}ᵀ + Δ C_{mm} Δᵀ
                 + Λ' V Λ'ᵀ\big) + \text{reg},

        where :math:`Λ' = C_{xm}(V + C_{mm})^{-1}` with
        :math:`C_{xm} = C_{em} + Λ C_{mm}` is the factor-analysis update of
        the loadings, and ψ' the mean expected squared residual under Λ'
        (tied: weighted by N_k over components; isotropic: averaged over
        features).
        """
        counts = guarded_counts(stats.counts)
        per = (1.0 / counts)[:, None]
        delta = stats.sums * per
        factor_mean = stats.factor_sums * per
        residual_mean = stats.residual_sums * per
        c_mm = stats.factor_products * per[..., None] - (
            factor_mean[:, :, None] * factor_mean[:, None, :]
        )
        c_em = stats.cross * per[..., None] - (
            residual_mean[:, :, None] * factor_mean[:, None, :]
        )
        e2 = stats.residual_squares * per - jnp.square(residual_mean)

        covariance = self.posterior(params).covariance  # V = M⁻¹, (K, q, q)
        loadings = params.loadings
        system_inverse, _ = _spd_inverse_and_log_det(covariance + c_mm)
        step = (c_em - loadings @ covariance) @ system_inverse
        # A column the update sends to (numerically) zero keeps its value: a
        # component without scatter (seeded on one sample) has loadings 0 at
        # its maximum, a saddle point that later updates could never leave
        # (the factor posterior is then the prior whatever x). There every
        # column vanishes, the loadings update is skipped and the noise below
        # is maximised for the loadings kept: G still does not decrease.
        psi = self.noise_per_feature(params)[..., None]
        size = jnp.sum(jnp.square(loadings + step) / psi, axis=1, keepdims=True)
        step = jnp.where(size <= jnp.finfo(psi.dtype).eps, 0.0, step)
        new_loadings = loadings + step
        residuals = (
            e2
            - 2 * jnp.sum(step * c_em, axis=-1)
            + jnp.einsum("kdq,kqr,kdr->kd", step, c_mm, step)
            + jnp.einsum("kdq,kqr,kdr->kd", new_loadings, covariance, new_loadings)
        )
        residuals = jnp.maximum(residuals, 0.0)
        noise = self.noise.from_residuals(residuals, counts) + self.reg_covar
        weights = update_weights(counts, self.uniform_weights)
        return FactorParams(weights, params.means + delta, new_loadings, noise)

    def _start(self, X: Array, resp: Array) -> FactorParams:
        """Weighted means, half the variance as noise, generic loadings."""
        n_features = X.shape[1]
        n_components = resp.shape[1]
        counts = guarded_counts(jnp.sum(resp, axis=0))
        means = (resp.T @ X) / counts[:, None]

        def per_block(X, resp):
            def variance(resp_k, mean):
                return jnp.square(X - mean).T @ resp_k

            return jax.vmap(variance, (1, 0))(resp, means)

        variances = _over_rows(per_block, X, resp, n_components, reduce=True)
        variances = variances / counts[:, None]
        half = 0.5 * variances + self.reg_covar + jnp.finfo(X.dtype).tiny
        # Fixed generic directions (rows of norm² ≈ q), scaled so that the
        # diagonal of ΛΛᵀ + Ψ is about the variance: the first updates turn
        # them towards the leading directions of each component's scatter.
        directions = _directions(n_features, self.n_factors, X.dtype)
        loadings = directions * jnp.sqrt(half / self.n_factors)[..., None]
        noise = self.noise.from_residuals(half, counts)
        weights = update_weights(counts, self.uniform_weights)
        return FactorParams(weights, means, loadings, noise)

    def reference(self, X: Array, resp: Array) -> FactorParams:
        r"""Weighted maximum-likelihood params for fixed responsibilities.

        From a generic start, the M-step's update F is iterated with ``resp``
        held fixed, accelerated by SQUAREM (Varadhan & Roland 2008): each cycle
        takes two updates θ₁ = F(θ₀), θ₂ = F(θ₁), extrapolates to
        θ₀ − 2α r + α² v with r = θ₁ − θ₀, v = θ₂ − 2θ₁ + θ₀ and
        α = min(−1, −‖r‖/‖v‖) (in coordinates: means and loadings over the
        data's scale, log noise variances), and keeps F of that point if it
        raises :math:`G = Σ_{nk} r_{nk} [\log π_k + \log p(x_n|θ_k)]` above
        G(θ₂), else θ₂, so G never decreases. Plain updates converge linearly,
        often at a rate near one (hundreds of passes). The cycles stop when an
        update moves no coordinate by more than 4096 machine epsilons (G is
        flat to round-off well before), or after ``reference_steps`` cycles of
        five passes over the data (three updates, two evaluations of G), each
        O(N·K·D·q).
        """
        self._check_features(X.shape[1])
        scale = charts.data_scale(X)
        # Distance to the fixed point ≈ move / (1 − rate) with rates up to
        # ~0.99: 1e-12 in float64 (stationary to ~1e-9 per sample).
        move_tol = 4096 * jnp.finfo(X.dtype).eps

        def objective(params):
            log_prob = self.log_component_density(params, X)
            log_prob = log_prob + jnp.log(params.weights)
            return jnp.sum(jnp.where(resp > 0, resp * log_prob, 0.0))

        def update(params):
            return self.m_step(self.statistics(params, X, resp), params)

        def coordinates(params):
            return (
                params.means / scale,
                params.loadings / scale[:, None],
                jnp.log(params.noise_variances),
            )

        def extrapolate(start, first, second):
            """θ₀ − 2αr + α²v, and the size of the first update's move."""
            u0, u1, u2 = coordinates(start), coordinates(first), coordinates(second)
            r = jax.tree.map(jnp.subtract, u1, u0)
            v = jax.tree.map(lambda a, b, c: c - 2 * b + a, u0, u1, u2)
            r_norm = jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in r))
            v_norm = jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in v))
            alpha = jnp.minimum(-1.0, -r_norm / jnp.maximum(v_norm, _TINY))
            means, loadings, log_noise = jax.tree.map(
                lambda a, b, c: a - 2 * alpha * b + alpha**2 * c, u0, r, v
            )
            point = second._replace(
                means=means * scale,
                loadings=loadings * scale[:, None],
                noise_variances=jnp.exp(log_noise),
            )
            move = jnp.max(jnp.stack([jnp.max(jnp.abs(a)) for a in r]))
            return point, move

        def select(index, options):
            return jax.tree.map(
                lambda *leaves: jnp.select(
                    [index == i for i in range(len(leaves) - 1)],
                    leaves[:-1],
                    leaves[-1],
                ),
                *options,
            )

        def cycle(state):
            start, _, _, count = state

            # θ₁ = F(θ₀), θ₂ = F(θ₁), θ₃ = F(extrapolated): one traced F.
            def one_update(index, points):
                first, second, _ = points
                point = select(
                    index, (start, first, extrapolate(start, first, second)[0])
                )
                new = update(point)
                return select(
                    index,
                    ((new, second, new), (first, new, new), (first, second, new)),
                )

            points = jax.lax.fori_loop(0, 3, one_update, (start, start, start))
            first, second, jump = points
            pair = jax.tree.map(lambda a, b: jnp.stack([a, b]), second, jump)
            second_value, jump_value = jax.vmap(objective)(pair)
            better = jump_value >= second_value  # False for NaN
            new = jax.tree.map(lambda a, b: jnp.where(better, a, b), jump, second)
            new_value = jnp.where(better, jump_value, second_value)
            _, move = extrapolate(start, first, second)
            return new, new_value, move, count + 1

        def moving(state):
            _, value, move, count = state
            return (
                (count < self.reference_steps) & jnp.isfinite(value) & (move > move_tol)
            )

        start = self._start(X, resp)
        inf = jnp.asarray(jnp.inf, X.dtype)
        # The start's G is never needed: a finite placeholder enters the loop.
        initial = (start, jnp.zeros((), X.dtype), inf, 0)
        return jax.lax.while_loop(moving, cycle, initial)[0]

    def covariances(self, params: FactorParams) -> Array:
        """Σ_k = Λ_kΛ_kᵀ + Ψ_k, (K, D, D): formed on request only (D×D each)."""
        psi = self.noise_per_feature(params)
        low_rank = params.loadings @ jnp.swapaxes(params.loadings, -1, -2)
        return low_rank + psi[..., None] * jnp.eye(psi.shape[-1], dtype=psi.dtype)
