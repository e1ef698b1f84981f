"""Per-covariance-type kernels shared by the Gaussian family.

Each kernel knows, for one covariance type, how to turn covariances into
precision Cholesky factors, how to evaluate the Mahalanobis term, how to
accumulate centred second moments and how to turn them back into covariances.
The Gaussian family picks one through :data:`KERNELS`.

Shapes follow scikit-learn: ``full`` (K, D, D), ``tied`` (D, D), ``diag`` (K, D),
``spherical`` (K,). Precision Cholesky factors ``U`` satisfy ``U Uᵀ = Σ⁻¹`` and are
upper triangular (``U = L⁻ᵀ`` for ``Σ = L Lᵀ``), so ``‖(x − μ)ᵀ U‖²`` is the
Mahalanobis distance.

Second moments are accumulated around a per-component *shift* ``c_k`` (the
current means during EM), never as raw ``E[x xᵀ]``: the covariance is then
``S2_k / N_k − d_k d_kᵀ`` with ``d_k = S1_k / N_k`` the (small) move of the mean,
which keeps float32 accurate on offset or well-separated data.

The kernels are the only place where the covariance type is dispatched: the
Gaussian family, the mixture algebra (:mod:`jaxmix.mixture`) and the estimator
call ``KERNELS[covariance_type].<method>``. Every kernel has the same members,
all static:

- EM: ``shape``, ``n_parameters``, ``chart``, ``precisions_cholesky``,
  ``precisions``, ``log_det_precision_cholesky``, ``mahalanobis``,
  ``second_moments``, ``covariances``, ``fill``;
- MAP: ``map_covariances`` (the mode of the normal-inverse-Wishart posterior,
  or its restriction), ``log_prior``, and host-side ``default_covariance_prior``
  and ``check_covariance_prior`` for Ψ₀;
- user input (host-side NumPy): ``check_precisions``,
  ``covariances_from_precisions``;
- mixture algebra: ``to_full``, ``to_diag``, ``convert_from``, ``within``,
  ``pairwise_sum``, ``sum_type``, ``scale_features`` / ``scaled_type``,
  ``transform`` / ``transformed_type``, ``select``, ``condition``,
  ``condition_masked``, ``sample_noise``, and host-side ``sample_numpy``.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, multigammaln

from jaxmix.families import charts

Array = jax.Array


_BLOCK = 32  # columns per diagonal block of the Cholesky factorisation


def _cholesky_unblocked(matrix: Array) -> Array:
    """Lower Cholesky factor by the outer-product algorithm, one column a step."""
    index = jnp.arange(matrix.shape[-1])

    def factor_column(j, carry):
        # Column j of L from the updated trailing matrix, then remove its
        # rank-one contribution.
        trailing, lower = carry
        pivot = jnp.sqrt(trailing[..., j, j])[..., None]
        below = jnp.where(index > j, trailing[..., :, j] / pivot, 0)
        column = below + jnp.where(index == j, pivot, 0)
        lower = lower + column[..., :, None] * (index == j)
        trailing = trailing - below[..., :, None] * below[..., None, :]
        return trailing, lower

    start = (matrix, jnp.zeros_like(matrix))
    return jax.lax.fori_loop(0, matrix.shape[-1], factor_column, start)[1]


def _invert_lower_unblocked(lower: Array) -> Array:
    """L⁻¹ by forward substitution, one row a step."""
    index = jnp.arange(lower.shape[-1])

    def invert_row(i, inverse):
        # Row i of L⁻¹ from L[i, :] · L⁻¹ = e_i; rows below i are still zero.
        unit = (index == i).astype(lower.dtype)
        rhs = unit - jnp.einsum("...k,...kd->...d", lower[..., i, :], inverse)
        row = rhs / lower[..., i, i][..., None]
        return inverse + row[..., None, :] * unit[:, None]

    start = jnp.zeros_like(lower)
    return jax.lax.fori_loop(0, lower.shape[-1], invert_row, start)


def _cholesky_precision(covariance: Array) -> Array:
    r"""Upper-triangular U with U Uᵀ = covariance⁻¹ (batched over leading axes).

    U = L⁻ᵀ for the Cholesky factor L of the covariance, computed in plain XLA
    rather than by LAPACK calls: on CPU, jax runs a batched LAPACK call through
    scipy's OpenBLAS, whose threads then spin for milliseconds and took about a
    third of the cycles of a two-core EM iteration (N=200k, D=32, K=16), and two
    batched LAPACK calls running at once can deadlock a two-thread intra-op pool.

    Blocked by 32 columns: each diagonal block is factored and inverted column
    by column, the rest are matrix products (right-looking Cholesky, then the
    inverse block row by block row: X_ii = L_ii⁻¹, X_i,<i = −X_ii L_i,<i X_<i,<i).
    On one core this takes 0.5 ms for 16 matrices of 32×32 and 1.2-2x LAPACK's
    time from D=128 to D=784. A matrix that is not positive definite gives NaN.
    """
    # Symmetrised like jnp.linalg.cholesky's input, so that derivatives with
    # respect to the covariance are symmetric too.
    covariance = 0.5 * (covariance + _t(covariance))
    n_features = covariance.shape[-1]
    starts = list(range(0, n_features, _BLOCK))
    inverse_blocks, panels = [], []
    trailing = covariance
    for start in starts:
        width = min(_BLOCK, n_features - start)
        factor = _cholesky_unblocked(trailing[..., :width, :width])
        inverse_blocks.append(_invert_lower_unblocked(factor))
        if start + width < n_features:
            # Rows of L below this diagonal block, and the Schur complement.
            panel = trailing[..., width:, :width] @ _t(inverse_blocks[-1])
            panels.append(panel)
            trailing = trailing[..., width:, width:] - panel @ _t(panel)
    inverse = inverse_blocks[0]  # L⁻¹ of the leading block rows, grown below
    for i, start in enumerate(starts[1:], 1):
        width = inverse_blocks[i].shape[-1]
        # L[block row i, :start]: from each earlier block column's panel, whose
        # first row is that block column's start + _BLOCK.
        row = jnp.concatenate(
            [
                panels[c][..., start - starts[c] - _BLOCK :, :][..., :width, :]
                for c in range(i)
            ],
            axis=-1,
        )
        below = -inverse_blocks[i] @ (row @ inverse)
        zeros = jnp.zeros(inverse.shape[:-1] + (width,), inverse.dtype)
        inverse = jnp.concatenate(
            [
                jnp.concatenate([inverse, zeros], axis=-1),
                jnp.concatenate([below, inverse_blocks[i]], axis=-1),
            ],
            axis=-2,
        )
    return _t(inverse)


def _t(matrix: Array) -> Array:
    return jnp.swapaxes(matrix, -1, -2)


def _log_diag_sum(prec_chol: Array) -> Array:
    # sum(log(diag)) rather than trace(log(U)): the latter has a NaN gradient
    # through the zero triangle.
    return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)


def _map_components(one_component, xs, n_samples: int, n_features: int):
    """``lax.map`` over components, several per step when each one is small.

    Mapping keeps a component's (D, n) intermediates in cache, where one
    broadcast over (K, D, n) streams them through memory; grouping components
    (up to 32k elements a step) keeps the loop overhead small for large K.
    """
    batch_size = max(1, 32768 // max(1, n_samples * n_features))
    return jax.lax.map(
        one_component, xs, batch_size=batch_size if batch_size > 1 else None
    )


def _diag_quadratic(X: Array, means: Array, precisions: Array) -> Array:
    """Σ_d p_kd (x_nd − μ_kd)², shape (n, K), by direct differences."""
    data_t = X.T  # (D, n): samples along the fast axis

    def one_component(args):
        mean_k, precision_k = args
        return precision_k @ jnp.square(data_t - mean_k[:, None])

    return _map_components(one_component, (means, precisions), *X.shape).T


# ----------------------------------------------------------------------------
# Conjugate priors
# ----------------------------------------------------------------------------

_LOG_2PI = math.log(2 * math.pi)


def _log_det_psd(matrix: Array) -> Array:
    return 2 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(matrix))))


def _log_normal_iw(projected, prec_chol, kappa, psi, nu):
    r"""log N(μ | m₀, Σ/κ₀) + log IW(Σ | Ψ₀, ν₀) through U with U Uᵀ = Σ⁻¹.

    ``projected`` is (μ_k − m₀)ᵀ U_k, shape (K, D); ``prec_chol`` is (K, D, D)
    (one Σ per mean) or (D, D) (one Σ shared by all means, counted once in the
    IW term).
    """
    n_features = projected.shape[-1]
    log_det_u = jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), -1)
    log_normal = (
        0.5 * n_features * (jnp.log(kappa) - _LOG_2PI)
        + log_det_u
        - 0.5 * kappa * jnp.sum(jnp.square(projected), axis=-1)
    )
    trace = jnp.einsum("de,...ef,...df->...", psi, prec_chol, prec_chol)
    log_iw = (
        0.5 * nu * _log_det_psd(psi)
        - 0.5 * nu * n_features * math.log(2)
        - multigammaln(0.5 * nu, n_features)
        + (nu + n_features + 1) * log_det_u
        - 0.5 * trace
    )
    return jnp.sum(log_normal) + jnp.sum(log_iw)


def _log_normal_inverse_gamma(deviation, variances, kappa, shape, scale):
    r"""Σ log N(μ | m₀, σ²/κ₀) + log IG(σ² | shape, scale), elementwise."""
    log_var = jnp.log(variances)
    log_normal = 0.5 * (jnp.log(kappa) - _LOG_2PI - log_var) - 0.5 * kappa * (
        jnp.square(deviation) / variances
    )
    log_ig = (
        shape * jnp.log(scale)
        - gammaln(shape)
        - (shape + 1) * log_var
        - scale / variances
    )
    return jnp.sum(log_normal) + jnp.sum(log_ig)


def _check_matrix_prior(psi, n_features: int) -> np.ndarray:
    """Ψ₀ for full and tied: a symmetric positive definite (D, D) matrix."""
    psi = np.asarray(psi, dtype=np.float64)
    if psi.shape != (n_features, n_features):
        raise ValueError(
            f"covariance_prior must have shape ({n_features}, {n_features}), "
            f"got {psi.shape}"
        )
    if not np.all(np.isfinite(psi)):
        raise ValueError("covariance_prior contains NaN or infinity")
    if not np.allclose(psi, psi.T) or np.linalg.eigvalsh(psi).min() <= 0:
        raise ValueError("covariance_prior must be symmetric positive definite")
    return psi


# ----------------------------------------------------------------------------
# User-given precisions (host-side)
# ----------------------------------------------------------------------------


def _check_matrix_precisions(precisions: np.ndarray, name: str, n_features: int):
    for matrix in precisions.reshape(-1, n_features, n_features):
        symmetric = np.allclose(matrix, matrix.T)
        if not symmetric or np.linalg.eigvalsh(matrix).min() <= 0:
            raise ValueError(
                f"'{name} precision' should be symmetric, positive-definite"
            )


def _check_positive_precisions(precisions: np.ndarray, name: str, n_features: int):
    del n_features
    if np.any(precisions <= 0):
        raise ValueError(f"'{name} precision' should be positive")


def _invert_matrix_precisions(precisions: np.ndarray) -> np.ndarray:
    """Σ = P⁻¹ through the Cholesky factor of P (batched over leading axes)."""
    precisions = np.asarray(precisions)
    lower = np.linalg.cholesky(precisions)
    eye = np.broadcast_to(np.eye(precisions.shape[-1]), precisions.shape)
    inv_lower = np.linalg.solve(lower, eye)
    return np.swapaxes(inv_lower, -1, -2) @ inv_lower


def _invert_variances(precisions: np.ndarray) -> np.ndarray:
    return 1.0 / np.asarray(precisions)


# ----------------------------------------------------------------------------
# Mixture algebra
# ----------------------------------------------------------------------------

_solve_lower = functools.partial(jax.scipy.linalg.solve_triangular, lower=True)


def _not_diagonal(covariances, n_components, n_features):
    del covariances, n_components, n_features
    raise AssertionError("full and tied covariances have no diagonal form")


def _same(source, covariances, n_components, n_features):
    # Only reached for the same type: see the kernels' ``sum_type``.
    del source, n_components, n_features
    return covariances


def _pairwise_sum_per_component(cov_x: Array, cov_y: Array) -> Array:
    # Component (k, l) of the sum is row k·K_y + l: x outer, y inner.
    n_x, n_y = cov_x.shape[0], cov_y.shape[0]
    return (cov_x[:, None] + cov_y[None, :]).reshape(n_x * n_y, *cov_x.shape[1:])


def _schur_condition(cov_oo: Array, cov_ou: Array, cov_uu: Array):
    r"""Cholesky factor L of Σ_oo, gain L⁻¹Σ_ou, Σ_uu − Σ_uo Σ_oo⁻¹ Σ_ou, ½log|Σ_oo|.

    The conditional covariance is the Schur complement
    Σ_uu − (L⁻¹Σ_ou)ᵀ(L⁻¹Σ_ou); the inverse is never formed.
    """
    lower = jnp.linalg.cholesky(cov_oo)
    gain = _solve_lower(lower, cov_ou)
    cond_cov = cov_uu - jnp.swapaxes(gain, -1, -2) @ gain
    cond_cov = 0.5 * (cond_cov + jnp.swapaxes(cond_cov, -1, -2))
    return lower, gain, cond_cov, _log_diag_sum(lower)


def _masked_factor(covariances: Array, mask: Array):
    r"""Cholesky factor of Σ with unobserved rows and columns set to the identity.

    The factor is that of Σ_oo on the observed block and the identity elsewhere
    (no fill-in across the blocks). Returns it, the gain L⁻¹Σ_ou (Σ_ou embedded
    in a (D, D) matrix) and ½ log|Σ_oo|.
    """
    outer = mask[:, None] * mask[None, :]
    padded = covariances * outer + jnp.diag(1 - mask)
    cross = covariances * (mask[:, None] * (1 - mask)[None, :])  # Σ_ou, embedded
    lower = jnp.linalg.cholesky(padded)
    gain = _solve_lower(lower, cross)  # L⁻¹ Σ_ou
    return lower, gain, _log_diag_sum(lower)


def _condition_masked_diagonal(means, variances, residual, mask):
    """Masked conditioning for diagonal covariances: only the likelihood changes."""
    variances = jnp.broadcast_to(variances, means.shape)
    maha = jnp.sum(jnp.square(residual) / variances, axis=-1)
    log_det = 0.5 * jnp.sum(mask * jnp.log(variances), axis=-1)
    return jnp.broadcast_to(means, residual.shape), maha, log_det


class _Full:
    """One full covariance matrix per component."""

    name = "full"
    diagonal = False  # whether every covariance is a diagonal matrix
    chart = charts.Cholesky

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        return (n_components, n_features, n_features)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        return n_components * n_features * (n_features + 1) // 2

    @staticmethod
    def precisions_cholesky(covariances: Array) -> Array:
        return _cholesky_precision(covariances)

    @staticmethod
    def precisions(prec_chol: Array) -> Array:
        return prec_chol @ jnp.swapaxes(prec_chol, -1, -2)

    @staticmethod
    def log_det_precision_cholesky(prec_chol: Array, n_features: int) -> Array:
        del n_features
        return _log_diag_sum(prec_chol)  # (K,)

    @staticmethod
    def mahalanobis(X: Array, means: Array, prec_chol: Array, origin: Array) -> Array:
        # All components in one matrix product, (K·D, D) @ (D, n): samples run
        # along the fast axis, so the product's output feeds the squared-norm
        # reduction over D without a transpose. Working relative to an origin
        # near the data keeps X U and μ U from cancelling far from zero.
        n_components, n_features = means.shape
        stacked = jnp.swapaxes(prec_chol, 1, 2).reshape(
            n_components * n_features, n_features
        )  # row (k, e) is column e of U_k
        projected = (stacked @ (X - origin).T).reshape(n_components, n_features, -1)
        projected_means = jnp.einsum("kd,kde->ke", means - origin, prec_chol)
        return jnp.sum(jnp.square(projected - projected_means[:, :, None]), axis=1).T

    @staticmethod
    def second_moments(X: Array, resp: Array, shift: Array) -> tuple[Array, Array]:
        # One (D, n) @ (n, D) product per component, each centred at its own
        # shift, mapped over components. With the data transposed once to
        # (D, n), both operands are contiguous along the contraction over
        # samples; on CPU this measured about twice as fast as the (n, D)
        # layout, and faster than one batched product over components.
        data_t = X.T

        def one_component(args):
            resp_k, shift_k = args
            centred = data_t - shift_k[:, None]
            weighted = centred * resp_k[None, :]
            second = jax.lax.dot_general(weighted, centred, (((1,), (1,)), ((), ())))
            return jnp.sum(weighted, axis=1), second

        return jax.lax.map(one_component, (resp.T, shift))

    @staticmethod
    def covariances(second, counts, delta, total, reg_covar, shift):
        del total, shift
        n_features = delta.shape[-1]
        cov = second / counts[:, None, None] - delta[:, :, None] * delta[:, None, :]
        cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
        return cov + reg_covar * jnp.eye(n_features, dtype=cov.dtype)

    @staticmethod
    def fill(variance, n_components: int, n_features: int, dtype) -> Array:
        eye = jnp.eye(n_features, dtype=dtype)
        return jnp.broadcast_to(variance * eye, (n_components, n_features, n_features))

    # MAP with a normal-inverse-Wishart prior

    @staticmethod
    def map_covariances(scatter_cov, counts, deviation, total, shrink, psi, nu):
        r"""Σ_k = (Ψ₀ + S_k + c_k d_k d_kᵀ) / (ν₀ + N_k + D + 2), without reg.

        ``scatter_cov`` is S_k / N_k (the ML covariances without reg),
        ``deviation`` d_k = x̄_k − m₀, ``shrink`` c_k = κ₀ N_k / (κ₀ + N_k).
        """
        del total
        n_features = deviation.shape[-1]
        scatter = scatter_cov * counts[:, None, None]
        moved = shrink[:, None, None] * deviation[:, :, None] * deviation[:, None, :]
        return (psi + scatter + moved) / (nu + counts + n_features + 2)[:, None, None]

    @staticmethod
    def log_prior(means, covariances, prec_chol, mean_prior, kappa, psi, nu):
        r"""Σ_k log N(μ_k | m₀, Σ_k/κ₀) + log IW(Σ_k | Ψ₀, ν₀)."""
        del covariances
        projected = jnp.einsum("kd,kde->ke", means - mean_prior, prec_chol)
        return _log_normal_iw(projected, prec_chol, kappa, psi, nu)

    @staticmethod
    def default_covariance_prior(X: np.ndarray) -> np.ndarray:
        """scikit-learn's default Ψ₀: the data covariance."""
        return np.atleast_2d(np.cov(X.T))

    check_covariance_prior = staticmethod(_check_matrix_prior)

    # User-given precisions (host-side)

    @staticmethod
    def check_precisions(precisions: np.ndarray, n_features: int) -> None:
        _check_matrix_precisions(precisions, "full", n_features)

    covariances_from_precisions = staticmethod(_invert_matrix_precisions)

    # Mixture algebra

    @staticmethod
    def to_full(covariances, n_components: int, n_features: int) -> Array:
        del n_components, n_features
        return covariances

    to_diag = staticmethod(_not_diagonal)

    @staticmethod
    def convert_from(source, covariances, n_components: int, n_features: int):
        """Covariances of kernel ``source`` expressed as full (K, D, D) matrices."""
        return source.to_full(covariances, n_components, n_features)

    @staticmethod
    def within(weights, covariances, n_features: int) -> Array:
        r"""Σ_k π_k Σ_k as a (D, D) matrix."""
        del n_features
        return jnp.einsum("k,kde->de", weights, covariances)

    pairwise_sum = staticmethod(_pairwise_sum_per_component)

    @staticmethod
    def sum_type(other) -> str:
        """Covariance type of Σ_k + Λ_l for Λ of kernel ``other``."""
        del other
        return "full"

    scaled_type = "full"
    transformed_type = "full"

    @staticmethod
    def scale_features(covariances, scale) -> Array:
        """diag(a) Σ_k diag(a) for a vector a of length D."""
        return scale[:, None] * covariances * scale[None, :]

    @staticmethod
    def transform(covariances, matrix) -> Array:
        """A Σ_k Aᵀ for A of shape (M, D)."""
        return matrix @ covariances @ matrix.T

    @staticmethod
    def select(covariances, rows, columns) -> Array:
        """The (rows, columns) block of every covariance."""
        return covariances[:, rows][:, :, columns]

    @staticmethod
    def condition(means_u, covariances, residual, observed, unobserved):
        r"""Each component conditioned on x_o, and x_o's marginal likelihood terms.

        Args:
          means_u: μ_{k,u}, (K, U).
          covariances: the covariances.
          residual: x_o − μ_{k,o}, (K, O).
          observed: observed feature indices (O,).
          unobserved: unobserved feature indices (U,).

        Returns:
          ``(means, covariances, maha, log_det)``: the conditional means and
          covariances over the unobserved features, the Mahalanobis term
          (x_o − μ_{k,o})ᵀ Σ_{k,oo}⁻¹ (x_o − μ_{k,o}) and ½ log|Σ_{k,oo}|, (K,).
        """
        cov_oo = _Full.select(covariances, observed, observed)
        cov_ou = _Full.select(covariances, observed, unobserved)
        cov_uu = _Full.select(covariances, unobserved, unobserved)
        lower, gain, cond_cov, log_det = _schur_condition(cov_oo, cov_ou, cov_uu)
        whitened = _solve_lower(lower, residual[..., None])[..., 0]  # (K, O)
        shift = jnp.einsum("kou,ko->ku", gain, whitened)
        maha = jnp.sum(jnp.square(whitened), axis=-1)
        return means_u + shift, cond_cov, maha, log_det

    @staticmethod
    def condition_masked(means, covariances, residual, mask):
        r"""Conditioning with the observed features given as a traced (D,) mask.

        Args:
          means: μ_k, (K, D).
          covariances: the covariances.
          residual: (x_n − μ_k) ⊙ mask, (N, K, D).
          mask: 1 for observed features, 0 elsewhere, (D,).

        Returns:
          ``(means, maha, log_det)``: the conditional means (N, K, D), meaningful
          on the unobserved features, the Mahalanobis term and ½ log|Σ_{k,oo}|.
        """
        lower, gain, log_det = _masked_factor(covariances, mask)
        whitened = jnp.moveaxis(
            _solve_lower(lower, jnp.moveaxis(residual, 0, -1)), -1, 0
        )
        shift = jnp.einsum("kdu,nkd->nku", gain, whitened)
        maha = jnp.sum(jnp.square(whitened), axis=-1)
        return means + shift, maha, log_det

    @staticmethod
    def sample_noise(covariances, labels, noise) -> Array:
        """L_{label_n} z_n with L_k L_kᵀ = Σ_k, for standard normal z (N, D)."""
        # One (N, D) @ (D, D) product per component, kept where the label
        # matches: memory stays N·D, where gathering each sample's factor would
        # take N·D².
        factors = jnp.linalg.cholesky(covariances)

        def one_component(k, scaled):
            return jnp.where((labels == k)[:, None], noise @ factors[k].T, scaled)

        return jax.lax.fori_loop(
            0, factors.shape[0], one_component, jnp.zeros_like(noise)
        )

    @staticmethod
    def sample_numpy(rng, mean, covariances, component: int, count: int):
        """``count`` host-side samples of component ``component`` with mean ``mean``."""
        return rng.multivariate_normal(mean, covariances[component], count)


class _Tied:
    """One covariance matrix shared by all components, normalised by N."""

    name = "tied"
    diagonal = False
    chart = charts.TiedCholesky

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        return (n_features, n_features)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        return n_features * (n_features + 1) // 2

    precisions_cholesky = staticmethod(_cholesky_precision)
    precisions = staticmethod(_Full.precisions)

    @staticmethod
    def log_det_precision_cholesky(prec_chol: Array, n_features: int) -> Array:
        del n_features
        return _log_diag_sum(prec_chol)  # scalar

    @staticmethod
    def mahalanobis(X: Array, means: Array, prec_chol: Array, origin: Array) -> Array:
        projected = (X - origin) @ prec_chol  # (N, D)
        projected_means = (means - origin) @ prec_chol  # (K, D)
        return jnp.sum(
            jnp.square(projected[:, None, :] - projected_means[None]), axis=-1
        )

    @staticmethod
    def second_moments(X: Array, resp: Array, shift: Array):
        r"""Additive statistics for the pooled within-component scatter.

        With s_n = Σ_k r_nk and m_n = Σ_k r_nk c_k / s_n,

        .. math::
            Σ_k r_nk (x_n − c_k)(x_n − c_k)ᵀ = s_n (x_n − m_n)(x_n − m_n)ᵀ
                + ½ Σ_{k,l} (r_nk r_nl / s_n) (c_k − c_l)(c_k − c_l)ᵀ,

        so one D×D product over residuals and a K×K Gram matrix replace K
        separate D×D products, and every term is a sum of positive parts.
        """
        total_resp = jnp.sum(resp, axis=1)  # (N,)
        safe_total = jnp.where(total_resp > 0, total_resp, 1.0)
        # m_n relative to an origin among the shifts: a raw Σ_k r_nk c_k far
        # from zero would carry the origin's rounding into every residual.
        origin = shift[0]
        residual = (X - origin) - (resp @ (shift - origin)) / safe_total[:, None]
        scatter = (residual * total_resp[:, None]).T @ residual
        gram = (resp / safe_total[:, None]).T @ resp  # (K, K)
        # Σ_n r_nk (x_n − c_k) = Σ_n r_nk (x_n − m_n) + Σ_l G_kl (c_l − c_k):
        # no raw Σ r x, which loses the mean's digits far from the origin.
        between = shift[None, :, :] - shift[:, None, :]  # (K, K, D): c_l − c_k
        sums = resp.T @ residual + jnp.einsum("kl,kld->kd", gram, between)
        return sums, (scatter, gram)

    @staticmethod
    def covariances(second, counts, delta, total, reg_covar, shift):
        scatter, gram = second
        n_features = delta.shape[-1]
        between = shift[:, None, :] - shift[None, :, :]  # (K, K, D)
        pairs = 0.5 * jnp.einsum("kl,kld,kle->de", gram, between, between)
        moved = jnp.einsum("k,kd,ke->de", counts, delta, delta)
        cov = (scatter + pairs - moved) / total
        cov = 0.5 * (cov + cov.T)
        return cov + reg_covar * jnp.eye(n_features, dtype=cov.dtype)

    @staticmethod
    def fill(variance, n_components: int, n_features: int, dtype) -> Array:
        return variance * jnp.eye(n_features, dtype=dtype)

    # MAP with a normal-inverse-Wishart prior

    @staticmethod
    def map_covariances(scatter_cov, counts, deviation, total, shrink, psi, nu):
        r"""Σ = (Ψ₀ + Σ_k (S_k + c_k d_k d_kᵀ)) / (ν₀ + N + D + 1 + K), without reg."""
        n_components, n_features = deviation.shape
        scatter = scatter_cov * total
        moved = jnp.einsum("k,kd,ke->de", shrink, deviation, deviation)
        return (psi + scatter + moved) / (nu + total + n_features + 1 + n_components)

    @staticmethod
    def log_prior(means, covariances, prec_chol, mean_prior, kappa, psi, nu):
        r"""Σ_k log N(μ_k | m₀, Σ/κ₀) + log IW(Σ | Ψ₀, ν₀)."""
        del covariances
        projected = (means - mean_prior) @ prec_chol
        return _log_normal_iw(projected, prec_chol, kappa, psi, nu)

    default_covariance_prior = staticmethod(_Full.default_covariance_prior)
    check_covariance_prior = staticmethod(_check_matrix_prior)

    # User-given precisions (host-side)

    @staticmethod
    def check_precisions(precisions: np.ndarray, n_features: int) -> None:
        _check_matrix_precisions(precisions, "tied", n_features)

    covariances_from_precisions = staticmethod(_invert_matrix_precisions)

    # Mixture algebra

    @staticmethod
    def to_full(covariances, n_components: int, n_features: int) -> Array:
        return jnp.broadcast_to(covariances, (n_components, n_features, n_features))

    to_diag = staticmethod(_not_diagonal)
    convert_from = staticmethod(_same)

    @staticmethod
    def within(weights, covariances, n_features: int) -> Array:
        del n_features
        return jnp.sum(weights) * covariances

    @staticmethod
    def pairwise_sum(cov_x, cov_y) -> Array:
        # Every pair (k, l) has the same Σ_x + Σ_y.
        return cov_x + cov_y

    @staticmethod
    def sum_type(other) -> str:
        return "tied" if other is _Tied else "full"

    scaled_type = "tied"
    transformed_type = "tied"
    scale_features = staticmethod(_Full.scale_features)
    transform = staticmethod(_Full.transform)

    @staticmethod
    def select(covariances, rows, columns) -> Array:
        return covariances[rows][:, columns]

    @staticmethod
    def condition(means_u, covariances, residual, observed, unobserved):
        cov_oo = _Tied.select(covariances, observed, observed)
        cov_ou = _Tied.select(covariances, observed, unobserved)
        cov_uu = _Tied.select(covariances, unobserved, unobserved)
        lower, gain, cond_cov, log_det = _schur_condition(cov_oo, cov_ou, cov_uu)
        whitened = _solve_lower(lower, residual.T).T  # (K, O)
        shift = whitened @ gain
        maha = jnp.sum(jnp.square(whitened), axis=-1)
        return means_u + shift, cond_cov, maha, log_det

    @staticmethod
    def condition_masked(means, covariances, residual, mask):
        lower, gain, log_det = _masked_factor(covariances, mask)
        whitened = _solve_lower(lower, residual.reshape(-1, means.shape[1]).T).T
        whitened = whitened.reshape(residual.shape)
        shift = whitened @ gain
        maha = jnp.sum(jnp.square(whitened), axis=-1)
        return means + shift, maha, log_det

    @staticmethod
    def sample_noise(covariances, labels, noise) -> Array:
        del labels
        return noise @ jnp.linalg.cholesky(covariances).T

    @staticmethod
    def sample_numpy(rng, mean, covariances, component: int, count: int):
        del component
        return rng.multivariate_normal(mean, covariances, count)


class _Diag:
    """One diagonal covariance per component."""

    name = "diag"
    diagonal = True
    chart = charts.LogVariance

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        return (n_components, n_features)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        return n_components * n_features

    @staticmethod
    def precisions_cholesky(covariances: Array) -> Array:
        return jax.lax.rsqrt(covariances)

    @staticmethod
    def precisions(prec_chol: Array) -> Array:
        return jnp.square(prec_chol)

    @staticmethod
    def log_det_precision_cholesky(prec_chol: Array, n_features: int) -> Array:
        del n_features
        return jnp.sum(jnp.log(prec_chol), axis=-1)

    @staticmethod
    def mahalanobis(X: Array, means: Array, prec_chol: Array, origin: Array) -> Array:
        del origin  # direct differences need no reference point
        return _diag_quadratic(X, means, jnp.square(prec_chol))

    @staticmethod
    def second_moments(X: Array, resp: Array, shift: Array):
        # Direct differences from each component's shift, one component at a
        # time (see _map_components): Σ_n r_nk (x_n − c_k) and its squares, as
        # two matrix-vector products over the samples.
        data_t = X.T

        def one_component(args):
            resp_k, shift_k = args
            centred = data_t - shift_k[:, None]
            return centred @ resp_k, jnp.square(centred) @ resp_k

        return _map_components(one_component, (resp.T, shift), *X.shape)

    @staticmethod
    def covariances(second, counts, delta, total, reg_covar, shift):
        del total, shift
        return second / counts[:, None] - jnp.square(delta) + reg_covar

    @staticmethod
    def fill(variance, n_components: int, n_features: int, dtype) -> Array:
        return jnp.full((n_components, n_features), variance, dtype=dtype)

    # MAP with a normal-inverse-Wishart prior restricted to diagonal Σ_k

    @staticmethod
    def map_covariances(scatter_cov, counts, deviation, total, shrink, psi, nu):
        r"""σ²_kd = (ψ_d + S_k,dd + c_k d_kd²) / (ν₀ + N_k + D + 2), without reg."""
        del total
        n_features = deviation.shape[-1]
        scatter = scatter_cov * counts[:, None]
        moved = shrink[:, None] * jnp.square(deviation)
        return (psi + scatter + moved) / (nu + counts + n_features + 2)[:, None]

    @staticmethod
    def log_prior(means, covariances, prec_chol, mean_prior, kappa, psi, nu):
        r"""Σ_kd log N(μ_kd | m₀d, σ²_kd/κ₀) + log IG(σ²_kd | (ν₀ + D − 1)/2, ψ_d/2)."""
        del prec_chol
        n_features = means.shape[-1]
        shape = 0.5 * (nu + n_features - 1)
        return _log_normal_inverse_gamma(
            means - mean_prior, covariances, kappa, shape, 0.5 * psi
        )

    @staticmethod
    def default_covariance_prior(X: np.ndarray) -> np.ndarray:
        """The data variances (the diagonal of scikit-learn's default)."""
        return np.var(X, axis=0, ddof=1)

    @staticmethod
    def check_covariance_prior(psi, n_features: int) -> np.ndarray:
        psi = np.asarray(psi, dtype=np.float64)
        if psi.shape != (n_features,):
            raise ValueError(
                f"covariance_prior for covariance_type='diag' must have shape "
                f"({n_features},), got {psi.shape}"
            )
        if not np.all(np.isfinite(psi)) or np.any(psi <= 0):
            raise ValueError("covariance_prior must be finite and positive")
        return psi

    # User-given precisions (host-side)

    @staticmethod
    def check_precisions(precisions: np.ndarray, n_features: int) -> None:
        _check_positive_precisions(precisions, "diag", n_features)

    covariances_from_precisions = staticmethod(_invert_variances)

    # Mixture algebra

    @staticmethod
    def to_full(covariances, n_components: int, n_features: int) -> Array:
        del n_components
        eye = jnp.eye(n_features, dtype=covariances.dtype)
        return covariances[:, :, None] * eye

    @staticmethod
    def to_diag(covariances, n_components: int, n_features: int) -> Array:
        del n_components, n_features
        return covariances

    @staticmethod
    def convert_from(source, covariances, n_components: int, n_features: int):
        """Covariances of a diagonal kernel ``source`` as (K, D) variances."""
        return source.to_diag(covariances, n_components, n_features)

    @staticmethod
    def within(weights, covariances, n_features: int) -> Array:
        del n_features
        return jnp.diag(weights @ covariances)

    pairwise_sum = staticmethod(_pairwise_sum_per_component)

    @staticmethod
    def sum_type(other) -> str:
        return "diag" if other.diagonal else "full"

    scaled_type = "diag"
    transformed_type = "full"

    @staticmethod
    def scale_features(covariances, scale) -> Array:
        return covariances * jnp.square(scale)

    @staticmethod
    def transform(covariances, matrix) -> Array:
        return (matrix * covariances[:, None, :]) @ matrix.T

    @staticmethod
    def select(covariances, rows, columns) -> Array:
        # Diagonal blocks only: a marginal keeps the variances of ``rows``.
        del columns
        return covariances[:, rows]

    @staticmethod
    def condition(means_u, covariances, residual, observed, unobserved):
        # Features are independent within a component: only the weights change.
        var_o = covariances[:, observed]
        maha = jnp.sum(jnp.square(residual) / var_o, axis=-1)
        log_det = 0.5 * jnp.sum(jnp.log(var_o), axis=-1)
        return means_u, covariances[:, unobserved], maha, log_det

    @staticmethod
    def condition_masked(means, covariances, residual, mask):
        return _condition_masked_diagonal(means, covariances, residual, mask)

    @staticmethod
    def sample_noise(covariances, labels, noise) -> Array:
        return noise * jnp.sqrt(covariances)[labels]

    @staticmethod
    def sample_numpy(rng, mean, covariances, component: int, count: int):
        scale = np.sqrt(covariances[component])
        return mean + rng.standard_normal((count, mean.shape[0])) * scale


class _Spherical:
    """One variance per component, shared by all features."""

    name = "spherical"
    diagonal = True
    chart = charts.SphericalLogVariance

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        return (n_components,)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        return n_components

    precisions_cholesky = staticmethod(_Diag.precisions_cholesky)
    precisions = staticmethod(_Diag.precisions)

    @staticmethod
    def log_det_precision_cholesky(prec_chol: Array, n_features: int) -> Array:
        return n_features * jnp.log(prec_chol)

    @staticmethod
    def mahalanobis(X: Array, means: Array, prec_chol: Array, origin: Array) -> Array:
        del origin
        precisions = jnp.broadcast_to(jnp.square(prec_chol)[:, None], means.shape)
        return _diag_quadratic(X, means, precisions)

    second_moments = staticmethod(_Diag.second_moments)

    @staticmethod
    def covariances(second, counts, delta, total, reg_covar, shift):
        diag = _Diag.covariances(second, counts, delta, total, reg_covar, shift)
        return jnp.mean(diag, axis=-1)

    @staticmethod
    def fill(variance, n_components: int, n_features: int, dtype) -> Array:
        return jnp.full((n_components,), variance, dtype=dtype)

    # MAP with a normal-inverse-Wishart prior restricted to Σ_k = σ²_k I

    @staticmethod
    def map_covariances(scatter_cov, counts, deviation, total, shrink, psi, nu):
        r"""σ²_k = (Dψ + tr S_k + c_k ‖d_k‖²) / (D (ν₀ + N_k + D + 2)), without reg."""
        del total
        n_features = deviation.shape[-1]
        trace_scatter = scatter_cov * counts * n_features
        moved = shrink * jnp.sum(jnp.square(deviation), axis=-1)
        return (n_features * psi + trace_scatter + moved) / (
            n_features * (nu + counts + n_features + 2)
        )

    @staticmethod
    def log_prior(means, covariances, prec_chol, mean_prior, kappa, psi, nu):
        r"""log N(μ_k | m₀, σ²_k I/κ₀) + log IG(σ²_k | D(ν₀+D+1)/2 − 1, Dψ/2)."""
        del prec_chol
        n_features = means.shape[-1]
        deviation = jnp.sum(jnp.square(means - mean_prior), axis=-1)
        log_var = jnp.log(covariances)
        log_normal = (
            0.5 * n_features * (jnp.log(kappa) - _LOG_2PI - log_var)
            - 0.5 * kappa * deviation / covariances
        )
        shape = 0.5 * n_features * (nu + n_features + 1) - 1
        scale = 0.5 * n_features * psi
        log_ig = (
            shape * jnp.log(scale)
            - gammaln(shape)
            - (shape + 1) * log_var
            - scale / covariances
        )
        return jnp.sum(log_normal) + jnp.sum(log_ig)

    @staticmethod
    def default_covariance_prior(X: np.ndarray) -> float:
        """The mean of the data variances."""
        return np.var(X, axis=0, ddof=1).mean()

    @staticmethod
    def check_covariance_prior(psi, n_features: int) -> float:
        del n_features
        if isinstance(psi, bool) or not isinstance(psi, numbers.Real):
            raise ValueError(f"covariance_prior must be a real number, got {psi!r}")
        if not np.isfinite(psi) or psi <= 0:
            raise ValueError(
                f"covariance_prior must be a finite positive number, got {psi}"
            )
        return float(psi)

    # User-given precisions (host-side)

    @staticmethod
    def check_precisions(precisions: np.ndarray, n_features: int) -> None:
        _check_positive_precisions(precisions, "spherical", n_features)

    covariances_from_precisions = staticmethod(_invert_variances)

    # Mixture algebra

    @staticmethod
    def to_full(covariances, n_components: int, n_features: int) -> Array:
        del n_components
        eye = jnp.eye(n_features, dtype=covariances.dtype)
        return covariances[:, None, None] * eye

    @staticmethod
    def to_diag(covariances, n_components: int, n_features: int) -> Array:
        return jnp.broadcast_to(covariances[:, None], (n_components, n_features))

    convert_from = staticmethod(_same)

    @staticmethod
    def within(weights, covariances, n_features: int) -> Array:
        return (weights @ covariances) * jnp.eye(n_features, dtype=covariances.dtype)

    pairwise_sum = staticmethod(_pairwise_sum_per_component)

    @staticmethod
    def sum_type(other) -> str:
        # spherical + spherical stays spherical, spherical + diag is diag.
        return other.name if other.diagonal else "full"

    scaled_type = "diag"
    transformed_type = "full"

    @staticmethod
    def scale_features(covariances, scale) -> Array:
        return covariances[:, None] * jnp.square(scale)

    @staticmethod
    def transform(covariances, matrix) -> Array:
        return covariances[:, None, None] * (matrix @ matrix.T)

    @staticmethod
    def select(covariances, rows, columns) -> Array:
        del rows, columns
        return covariances

    @staticmethod
    def condition(means_u, covariances, residual, observed, unobserved):
        del unobserved
        n_observed = observed.shape[0]
        maha = jnp.sum(jnp.square(residual), axis=-1) / covariances
        log_det = 0.5 * n_observed * jnp.log(covariances)
        return means_u, covariances, maha, log_det

    @staticmethod
    def condition_masked(means, covariances, residual, mask):
        return _condition_masked_diagonal(means, covariances[:, None], residual, mask)

    @staticmethod
    def sample_noise(covariances, labels, noise) -> Array:
        return noise * jnp.sqrt(covariances)[labels][:, None]

    sample_numpy = staticmethod(_Diag.sample_numpy)


KERNELS = {"full": _Full, "tied": _Tied, "diag": _Diag, "spherical": _Spherical}
COVARIANCE_TYPES = tuple(KERNELS)


def covariances_from_precisions(precisions: np.ndarray, covariance_type: str):
    """Host-side inverse of user-given precisions (scikit-learn's precisions_init)."""
    return KERNELS[covariance_type].covariances_from_precisions(precisions)


def check_settings(covariance_type: str, reg_covar) -> None:
    """ValueError for an unknown covariance type or a negative (concrete) ridge."""
    if covariance_type not in KERNELS:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got "
            f"{covariance_type!r}"
        )
    if isinstance(reg_covar, (int, float)) and not reg_covar >= 0:
        raise ValueError(f"reg_covar must be non-negative, got {reg_covar}")
