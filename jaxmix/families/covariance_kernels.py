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
from typing import NamedTuple

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


# ----------------------------------------------------------------------------
# Missing values
# ----------------------------------------------------------------------------
#
# A sample with missing features contributes through its observed block o: the
# E-step needs each component's marginal density of x_o, the statistics the
# conditional moments of the missing block m given x_o. For full and tied
# covariances both come from the precision P = Σ⁻¹ = U Uᵀ and the missing
# block. The missing entries are filled with zero (the observed mean of the
# data the engine centres), x_f, so that all components share one matrix
# product as for complete data; with z = x_f − μ, g = (P z)_m and L Lᵀ = P_mm,
#
#   (x_o − μ_o)ᵀ Σ_oo⁻¹ (x_o − μ_o) = min over x_m = ‖Uᵀ z‖² − ‖L⁻¹ g‖²,
#   log|Σ_oo| = log|Σ| + log|P_mm|,
#   E[x_m | x_o] = x_f,m − P_mm⁻¹ g,   Cov[x_m | x_o] = P_mm⁻¹ = L⁻ᵀ L⁻¹.
#
# The difference of the two quadratic forms loses digits in float32 only when
# both are large against the result; a test checks it against the float32
# error of the complete-data density on strongly correlated data.
#
# Only the missing block is factored. Each row's missing features are listed
# in slots 0, 1, ..., padded to a static size s (a padded slot is an identity
# row and column of P_mm); P_mm is gathered from P and factored by a Cholesky
# written out entry by entry, each entry one array over all rows and
# components (batched LAPACK calls of tiny matrices are slow on CPU). The
# conditional covariance P_mm⁻¹ = L⁻ᵀ L⁻¹ of each row, weighted by its
# responsibility, is added into D×D at its slots' features by one scatter-add
# per block (for large s: the rows of L⁻¹ E, with E the slots' one-hot rows
# (s, D), one product over the rows each, as Eᵀ P_mm⁻¹ E = (L⁻¹E)ᵀ (L⁻¹E)).
#
# The rows are taken in sub-blocks of _MISSING_ROWS; each sub-block runs at the
# smallest size of _missing_sizes that holds its largest count of missing
# features, chosen inside the program by lax.switch, so a new pattern of
# missing values never recompiles and complete rows cost what they cost
# without missing values. The engine orders a fit's rows by their count of
# missing features (:func:`jaxmix.families.missing.rows_by_missing_count`), so
# most sub-blocks need a small size. Under vmap over data sets the switch
# becomes a select that runs every size. Diagonal and spherical covariances
# need none of this: their features are independent given the component.

_MISSING_ROWS = 512  # rows per sub-block, each at its own size of missing block


_LARGEST_SMALL_SIZE = 8


def _missing_sizes(n_features: int) -> tuple[int, ...]:
    """Static sizes of the missing block: 0, 1, 2, 3, 4, 6, 8 and D.

    Each size is a branch of the compiled program whose factorisation is
    written out step by step, so its code grows with the size: sizes between
    8 and D (12, 16, 24, ...) tripled the compile time at D = 30 (measured on
    a 2-core CPU) for sub-blocks that are rare once rows are ordered by their
    count of missing features.
    """
    sizes = (0, 1, 2, 3, 4, 6, _LARGEST_SMALL_SIZE)
    return tuple(s for s in sizes if s < n_features) + (n_features,)


def _barrier(entries: list[Array]) -> list[Array]:
    """The entries, computed before anything that uses them.

    XLA copies cheap elementwise producers into each consumer's fused loop;
    along the chain of a factorisation that repeats the earlier steps in every
    later one (the statistics of a block measured 3-4x slower at s = 4-8 on a
    2-core CPU without the barriers).
    """
    return list(jax.lax.optimization_barrier(tuple(entries)))


def _cholesky_entries(block) -> list[list[Array]]:
    """Lower Cholesky factors of s×s matrices given entry by entry.

    ``block[i][j]`` (i ≥ j is read) holds entry (i, j) of every matrix, an
    array over rows and components; ``L[i][j]`` (j ≤ i) likewise. Written per
    entry, every step is one fused loop over the matrices.
    """
    size = len(block)
    factor = [[None] * (i + 1) for i in range(size)]
    for j in range(size):
        pivot = block[j][j]
        for k in range(j):
            pivot = pivot - factor[j][k] * factor[j][k]
        factor[j][j] = jnp.sqrt(pivot)
        inverse = 1 / factor[j][j]
        for i in range(j + 1, size):
            value = block[i][j]
            for k in range(j):
                value = value - factor[i][k] * factor[j][k]
            factor[i][j] = value * inverse
        column = _barrier([factor[i][j] for i in range(j, size)])
        for i in range(j, size):
            factor[i][j] = column[i - j]
    return factor


def _forward_entries(factor, rhs: list[Array]) -> list[Array]:
    """L⁻¹ b, entry by entry, for a factor of :func:`_cholesky_entries`."""
    solution = []
    for i, row in enumerate(factor):
        value = rhs[i]
        for k in range(i):
            value = value - row[k] * solution[k]
        solution.append(_barrier([value / row[i]])[0])
    return solution


def _backward_entries(factor, rhs: list[Array]) -> list[Array]:
    """L⁻ᵀ b, entry by entry, for a factor of :func:`_cholesky_entries`."""
    size = len(factor)
    solution = [None] * size
    for i in reversed(range(size)):
        value = rhs[i]
        for k in range(i + 1, size):
            value = value - factor[k][i] * solution[k]
        solution[i] = _barrier([value / factor[i][i]])[0]
    return solution


def _inverse_lower(factor) -> list[list[Array]]:
    """L⁻¹ entry by entry (j ≤ i), for a factor of :func:`_cholesky_entries`."""
    size = len(factor)
    lower = [[None] * (i + 1) for i in range(size)]
    for i in range(size):
        lower[i][i] = 1 / factor[i][i]
        for j in range(i):
            value = factor[i][j] * lower[j][j]
            for k in range(j + 1, i):
                value = value + factor[i][k] * lower[k][j]
            lower[i][j] = -value * lower[i][i]
        lower[i] = _barrier(lower[i])
    return lower


def _missing_slots(missing_t: Array, size: int) -> tuple[Array, Array]:
    """Each row's missing features in slots: one-hot (s, D, n) and index (s, n).

    ``missing_t`` (D, n) marks the missing entries, rows along the last axis.
    Slot i of a row holds its i-th missing feature; the slots past its count
    are unused: no one-hot entry, index 0.
    """
    slot = jnp.cumsum(missing_t, axis=0, dtype=jnp.int32) - 1
    onehot = missing_t & (slot == jnp.arange(size, dtype=jnp.int32)[:, None, None])
    features = jnp.arange(missing_t.shape[0], dtype=jnp.int32)[:, None]
    return onehot, jnp.sum(jnp.where(onehot, features, 0), axis=1)


class _Conditioned(NamedTuple):
    """One block of rows conditioned on its observed features, per component.

    Rows run along the last axis; ``K`` is 1 for a tied covariance's factors.
    With L Lᵀ = P_mm and g = (P (x_f − μ_k))_m in slot order:
    """

    centred: Array  # (K, D, n)  x_f − μ_k, with x_f zero on the missing entries
    whitened: Array  # (K, D, n)  Uᵀ (x_f − μ_k)
    solved: Array | None  # (s, K, n)  L⁻¹ g
    half: Array | None  # (K, n)  ½ log|P_mm| = Σ log L_ii
    move: Array | None  # (s, K, n)  P_mm⁻¹ g = x_f,m − E[x_m | x_o]
    factor: Array | None  # (s, s, K, n)  L (zero above the diagonal)
    inverse: Array | None  # (s, s, K, n)  L⁻¹ if already formed, else None
    onehot: Array | None  # (s, D, n)  the slots' missing features
    index: Array | None  # (s, n)  their indices


def _factor_by_entries(block: Array, gradient: Array):
    """:class:`_Conditioned`'s factor terms from P_mm (s, s, K, n) and g (K, s, n).

    Entry by entry (:func:`_cholesky_entries`): for the small sizes, where it
    is fastest; its code grows as s³.
    """
    size = block.shape[0]
    factor = _cholesky_entries(
        [[block[i, j] for j in range(i + 1)] for i in range(size)]
    )
    solved = _forward_entries(factor, [gradient[:, i] for i in range(size)])
    move = _backward_entries(factor, solved)
    half = sum(jnp.log(row[-1]) for row in factor)
    return jnp.stack(solved), half, jnp.stack(move), _stack_lower(factor), None


def _factor_by_lapack(block: Array, gradient: Array):
    """:func:`_factor_by_entries` by batched LAPACK calls: for s up to D.

    Slower per matrix than the entries at small s, but its code does not grow
    with s (the entries took minutes to compile at s = 30); sub-blocks this
    large are rare once rows are ordered by their count of missing features.
    """
    lower = jnp.linalg.cholesky(jnp.moveaxis(block, (0, 1), (2, 3)))  # (K, n, s, s)
    eye = jnp.broadcast_to(jnp.eye(lower.shape[-1], dtype=lower.dtype), lower.shape)
    inverse = jax.scipy.linalg.solve_triangular(lower, eye, lower=True)
    # L⁻¹ g and L⁻ᵀ L⁻¹ g as products with L⁻¹: a batched triangular solve
    # with one right-hand side took 11 ms for K·n = 4096 matrices of size 16
    # on CPU, the products a fraction of that.
    rhs = jnp.moveaxis(gradient, 2, 1)  # (K, n, s)
    solved = jnp.einsum("knij,knj->kni", inverse, rhs)
    move = jnp.einsum("knji,knj->kni", inverse, solved)
    half = jnp.sum(jnp.log(jnp.diagonal(lower, axis1=2, axis2=3)), axis=2)
    return (
        jnp.moveaxis(solved, 2, 0),
        half,
        jnp.moveaxis(move, 2, 0),
        jnp.moveaxis(lower, (2, 3), (0, 1)),
        jnp.moveaxis(inverse, (2, 3), (0, 1)),
    )


def _stack_lower(entries: list[list[Array]]) -> Array:
    """Lower-triangular entries (row i holds i + 1 arrays) as one (s, s, ...) array."""
    size = len(entries)
    zero = jnp.zeros_like(entries[0][0])
    return jnp.stack([jnp.stack(row + [zero] * (size - len(row))) for row in entries])


def _inverse_of_factor(conditioned: _Conditioned) -> Array:
    """L⁻¹ (s, s, K, n): formed entry by entry here unless the factorisation did.

    Only the conditional covariances need L⁻¹; the entries path forms it
    where they are summed, after everything else has used the factor.
    """
    if conditioned.inverse is not None:
        return conditioned.inverse
    return _invert_stacked(conditioned.factor)


def _invert_stacked(factor: Array) -> Array:
    """L⁻¹ (s, s, ...) of a stacked lower factor, entry by entry."""
    entries = [[factor[i, j] for j in range(i + 1)] for i in range(factor.shape[0])]
    return _stack_lower(_inverse_lower(entries))


def _stacked_products(matrices: list[Array], data_t: Array, means: Array):
    """A_k (x − μ_k) for all components, (K, D, n) each, for A in ``matrices``.

    Each A is (K or 1, D, D); one (Σ K·D, D) @ (D, n) product serves them
    all and all components, as for complete data.
    """
    n_features = means.shape[1]
    stacked = jnp.concatenate([a.reshape(-1, n_features) for a in matrices])
    product = stacked @ data_t
    results, start = [], 0
    for a in matrices:
        stop = start + a.shape[0] * n_features
        part = product[start:stop].reshape(a.shape[0], n_features, -1)
        moved = jnp.einsum("kde,ke->kd", a, means)  # (K, D)
        results.append(part - moved[:, :, None])
        start = stop
    return results


def _slot_block(matrices: Array, index: Array, used: Array) -> Array:
    """Each row's block of ``matrices`` (K or 1, D, D) at its slots: (s, s, K, n).

    ``index`` (s, n) lists the features, ``used`` (s, n) marks the slots in
    use; a padded slot gets an identity row and column. Each entry is one
    gathered row of K values of the (D·D, K) table, rather than K values
    gathered one by one from (K, D·D): the whole fit measured about 5% faster
    (N = 100,000, D = 16, K = 8, 20% missing, on a 2-core CPU).
    """
    n_features, size = matrices.shape[-1], index.shape[0]
    flat = index[:, None, :] * n_features + index[None, :, :]  # (s, s, n)
    table = matrices.reshape(matrices.shape[0], -1).T  # (D·D, K)
    block = jnp.moveaxis(jnp.take(table, flat, axis=0), 3, 2)
    eye = jnp.eye(size, dtype=matrices.dtype)[:, :, None, None]
    pair = used[:, None] & used[None, :]
    return jnp.where(pair[:, :, None], block, eye)


def _condition(data_t, observed_t, means, prec_chol, size: int) -> _Conditioned:
    """Condition rows with at most ``size`` missing features on their observed ones.

    ``data_t`` (D, n) holds the rows as columns, with zeros at the missing
    entries (``observed_t`` (D, n) marks the others); ``prec_chol`` is U per
    component (K, D, D) or tied (D, D). The missing entries are filled with
    zero, the observed mean of the centred data, so that all components share
    one matrix product as for complete data; the minimisation over x_m then
    removes the fill.
    """
    n_components, n_features = means.shape
    if prec_chol.ndim == 2:
        prec_chol = prec_chol[None]
    centred = data_t[None] - means[:, :, None]  # (K, D, n)
    if size == 0:
        (whitened,) = _stacked_products([_t(prec_chol)], data_t, means)
        return _Conditioned(centred, whitened, *(None,) * 7)
    onehot, index = _missing_slots(~observed_t, size)
    precision = prec_chol @ _t(prec_chol)  # (K or 1, D, D)
    # Uᵀ (x_f − μ_k) and P (x_f − μ_k)
    whitened, gradient = _stacked_products([_t(prec_chol), precision], data_t, means)
    gradient = jnp.take_along_axis(gradient, index[None], axis=1)  # (K, s, n)
    used = jnp.any(onehot, axis=1)  # (s, n)
    gradient = jnp.where(used[None], gradient, 0)
    block = _slot_block(precision, index, used)  # P_mm
    if size <= _LARGEST_SMALL_SIZE:
        terms = _factor_by_entries(block, gradient)
    else:
        terms = _factor_by_lapack(block, gradient)
    return _Conditioned(centred, whitened, *terms, onehot, index)


def _observed_terms(conditioned: _Conditioned):
    """Mahalanobis terms of the observed blocks and ½ log|P_mm|, (K, n) each.

    ‖Uᵀ(x_f − μ)‖² − ‖L⁻¹ g‖²: the full term minimised over the missing entries.
    """
    maha = _sum_of_squares(conditioned.whitened, axis=1)
    if conditioned.solved is None:
        return maha, jnp.zeros((1, 1), maha.dtype)
    maha = maha - _sum_of_squares(conditioned.solved, axis=0)
    return jnp.maximum(maha, 0), conditioned.half


def _sum_of_squares(array: Array, axis: int) -> Array:
    """Σ x² over a short axis, written out as a sum of slices.

    As reductions, XLA's CPU backend fused these sums with their producers
    into library calls: the one over the whitened data, with the product
    that makes it, took 0.19 ms per 512-row block (K = 8, D = 16), about five
    times the product alone. Written out, the missing-value fit took about a
    quarter less time per iteration (N = 100,000, D = 16, K = 8 on a 2-core
    CPU). Not so for the complete-data kernel at D = 32, where the slices
    were slower than the reduction.
    """
    slices = jnp.moveaxis(array, axis, 0)
    return sum(jnp.square(slices[i]) for i in range(slices.shape[0]))


def _by_missing_size(compute, X, observed, *per_row, n_features: int):
    """``compute(size, data_t, observed_t, *per_row)`` per sub-block of rows, stacked.

    Each sub-block runs at the smallest static size that holds its largest
    count of missing features, and gets its rows as columns (D, n): the data
    are transposed once here rather than read across in every loop over a
    sub-block (which made each such loop several times slower on CPU). Rows
    are padded to whole sub-blocks with complete zero rows (and zero
    ``per_row`` values); the outputs come back with a leading sub-block axis.
    """
    n_samples = X.shape[0]
    rows = min(_MISSING_ROWS, n_samples)
    n_sub = -(-n_samples // rows)
    pad = n_sub * rows - n_samples

    def split(array, fill):
        widths = ((0, pad),) + ((0, 0),) * (array.ndim - 1)
        array = jnp.pad(array, widths, constant_values=fill)
        return array.reshape(n_sub, rows, *array.shape[1:])

    sizes = _missing_sizes(n_features)
    blocks = (
        jnp.swapaxes(split(X, 0), 1, 2),
        jnp.swapaxes(split(observed, True), 1, 2),
        *(split(a, 0) for a in per_row),
    )

    def one_block(arrays):
        largest = jnp.max(jnp.sum(~arrays[1], axis=0))
        which = jnp.searchsorted(jnp.asarray(sizes), largest)
        branches = [functools.partial(compute, size) for size in sizes]
        return jax.lax.switch(which, branches, *arrays)

    if n_sub == 1:
        return jax.tree.map(lambda leaf: leaf[None], one_block([b[0] for b in blocks]))
    return jax.lax.map(one_block, blocks)


def _matrix_missing_mahalanobis(X, observed, means, prec_chol):
    r"""Observed-block Mahalanobis terms and ½ log|Σ_oo⁻¹|, both (N, K).

    ``X`` holds zeros at the missing entries (:func:`split_missing`).
    """
    n_samples, n_features = X.shape
    n_components = means.shape[0]

    def compute(size, data_t, observed_t):
        maha, log_det, _ = _condition_block(size, data_t, observed_t, means, prec_chol)
        return maha.T, jnp.broadcast_to(log_det, maha.shape).T

    maha, half = _by_missing_size(compute, X, observed, n_features=n_features)
    shape = (-1, n_components)
    return maha.reshape(shape)[:n_samples], half.reshape(shape)[:n_samples]


def _completed(conditioned: _Conditioned) -> Array:
    """x̂ − μ_k (K, D, n): x_f − μ_k moved by E[x_m | x_o] − 0 on the missing block."""
    if conditioned.solved is None:
        return conditioned.centred
    move = conditioned.move
    onehot = conditioned.onehot.astype(move.dtype)[:, None]  # (s, 1, D, n)
    completed = conditioned.centred
    for slot in range(move.shape[0]):
        completed = completed - onehot[slot] * move[slot][:, None]
    return completed


def _inverse_factor_rows(inverse: Array, onehot: Array) -> list[Array]:
    """The rows of L⁻¹E in D coordinates, s arrays (K, D, n).

    ``inverse`` (s, s, K, n) holds L⁻¹ and ``onehot`` (s, D, n) the slots'
    one-hot rows E, so Eᵀ P_mm⁻¹ E = Σ_i (row i)ᵀ (row i): the conditional
    covariance of the missing block, placed in D×D. (Any rows E (s, [K,] D,
    n) will do: :func:`_condition_observed` passes columns of Σ.)
    """
    onehot = onehot.astype(inverse.dtype)
    if inverse.shape[0] > _LARGEST_SMALL_SIZE:  # one operation, not s² of them
        return list(jnp.einsum("ijkn,jdn->ikdn", inverse, onehot))
    rows = []
    for i in range(inverse.shape[0]):
        row = inverse[i, 0][:, None] * onehot[0]
        for j in range(1, i + 1):
            row = row + inverse[i, j][:, None] * onehot[j]
        rows.append(row)
    return rows


def _weighted_outer(columns: list[Array], weights: Array, tied: bool) -> Array:
    """Σ over columns and samples of w_nk c_kn c_knᵀ: (K, D, D), or (D, D) if tied.

    ``columns`` hold arrays (K, D, n), ``weights`` (K, 1, n); each column is
    one product over the samples.
    """
    second = 0
    for column in columns:
        weighted = column * weights
        if tied:
            second = second + jnp.einsum("kdn,ken->de", weighted, column)
        else:
            second = second + jnp.einsum("kdn,ken->kde", weighted, column)
    return second


def _weighted_moments(completed: Array, weights: Array, tied: bool):
    """Σ_n w_nk c_kn (K, D) and Σ_n w_nk c_kn c_knᵀ, from one product per component.

    ``completed`` (K, D, n), ``weights`` (K, 1, n); for tied covariances the
    second sums are added over components (D, D). A row of ones appended to
    the weighted side gives the first sums as the product's last row, in
    place of a separate reduction over the samples (which took about 40% of
    the product's time for a 512-row block on CPU).
    """
    n_features = completed.shape[1]
    ones = jnp.ones_like(completed[:, :1])
    weighted = jnp.concatenate([completed, ones], axis=1) * weights  # (K, D + 1, n)
    products = jnp.einsum("kdn,ken->kde", weighted, completed)  # (K, D + 1, D)
    sums = products[:, n_features]
    second = products[:, :n_features]
    return sums, jnp.sum(second, axis=0) if tied else second


def _covariance_by_scatter(conditioned: _Conditioned, resp: Array, tied: bool):
    """Σ_n r_nk C_nk: each row's s×s block of r_nk P_mm⁻¹ added into D×D.

    With L⁻¹ entry by entry, (P_mm⁻¹)_ij = Σ_{r ≥ i} (L⁻¹)_ri (L⁻¹)_rj for
    i ≥ j; the slots list a row's missing features in increasing order, so
    these land on and below the diagonal, and the upper triangle is their
    mirror. One scatter-add of s(s+1)/2 values per row and component: about
    half the time of a product per slot over D-long columns (N = 100,000,
    D = 16, K = 8, 20% missing, on a 2-core CPU).
    """
    factor, onehot, index = conditioned.factor, conditioned.onehot, conditioned.index
    size, n_features = onehot.shape[0], onehot.shape[1]
    inverse = _inverse_of_factor(conditioned)  # (s, s, K or 1, n)
    used = jnp.any(onehot, axis=1).astype(factor.dtype)  # (s, n); padded: 0
    # A tied factor is shared: weigh it by the rows' total responsibility.
    resp_t = jnp.sum(resp.T, axis=0, keepdims=True) if tied else resp.T  # (K or 1, n)
    n_components = resp_t.shape[0]
    values, flat = [], []
    for i in range(size):
        for j in range(i + 1):
            entry = sum(inverse[r, i] * inverse[r, j] for r in range(i, size))
            values.append(entry * (resp_t * (used[i] * used[j])))
            flat.append(index[i] * n_features + index[j])
    values = jnp.moveaxis(jnp.stack(values), 1, 2).reshape(-1, n_components)
    lower = jnp.zeros((n_features * n_features, n_components), values.dtype)
    lower = lower.at[jnp.stack(flat).reshape(-1)].add(values)
    lower = jnp.moveaxis(lower.reshape(n_features, n_features, n_components), 2, 0)
    total = lower + _t(lower) - lower * jnp.eye(n_features, dtype=lower.dtype)
    return total[0] if tied else total


def _covariance_by_rows(conditioned: _Conditioned, resp: Array, tied: bool):
    """Σ_n r_nk C_nk as one product per slot over D-long columns (for large s)."""
    inverse = _inverse_of_factor(conditioned)
    rows = _inverse_factor_rows(inverse, conditioned.onehot)
    return _weighted_outer(rows, resp.T[:, None, :], tied)


def _conditioned_moments(conditioned: _Conditioned, resp: Array, tied: bool):
    """Σ_n r_nk (x̂_nk − μ_k) (K, D), and Σ_n r_nk [(x̂ − μ_k)(x̂ − μ_k)ᵀ + C_nk].

    Per component (K, D, D), or for tied covariances their sum over components
    (D, D); ``resp`` (n, K). x̂ − μ gives one product over the samples, the
    conditional covariances C_nk a scatter-add of their s×s blocks
    (:func:`_covariance_by_scatter`), or for large s one product per slot
    (:func:`_covariance_by_rows`).
    """
    completed = _completed(conditioned)  # (K, D, n)
    sums, second = _weighted_moments(completed, resp.T[:, None, :], tied)
    if conditioned.solved is None:
        return sums, second
    if conditioned.factor.shape[0] <= _LARGEST_SMALL_SIZE:
        covariance = _covariance_by_scatter(conditioned, resp, tied)
    else:
        covariance = _covariance_by_rows(conditioned, resp, tied)
    return sums, second + covariance


def _condition_block(size, data_t, observed_t, means, prec_chol):
    """One sub-block (D, n) conditioned at ``size``: ``(maha, log_det, moments)``.

    ``maha`` (K, n) and ``log_det`` = ½ log|Σ_oo⁻¹| (K or 1, n) are the terms
    of the observed blocks' densities; ``moments(resp)`` gives the block's
    :func:`_conditioned_moments`. Rows have at most ``size`` missing
    features; the size D of 9 to 16 features conditions each row on the
    smaller of its two blocks (:func:`_condition_either_side`).
    """
    n_features = means.shape[1]
    if _LARGEST_SMALL_SIZE < size == n_features <= 2 * _LARGEST_SMALL_SIZE:
        return _condition_either_side(data_t, observed_t, means, prec_chol)
    tied = prec_chol.ndim == 2
    conditioned = _condition(data_t, observed_t, means, prec_chol, size)
    maha, half = _observed_terms(conditioned)
    # ½ log|Σ_oo⁻¹| = log|U| − ½ log|P_mm|
    log_det = jnp.reshape(_log_diag_sum(prec_chol), (-1, 1)) - half

    def moments(resp):
        return _conditioned_moments(conditioned, resp, tied)

    return maha, log_det, moments


def _condition_observed(data_t, observed_t, means, prec_chol, size):
    r"""Condition rows with at most ``size`` observed features, from Σ_oo.

    The counterpart of :func:`_condition` for rows with few observed
    features: with L Lᵀ = Σ_oo (the observed block of Σ = P⁻¹), w = L⁻¹ z_o
    and c_i the columns of Σ at the observed features,

      maha = ‖w‖²,   ½ log|Σ_oo⁻¹| = −Σ log L_ii,
      x̂ − μ = Σ_i c_i (L⁻ᵀ w)_i,   Cov[x | x_o] = Σ − Σ_i u_i u_iᵀ,

    where u_i = Σ_j (L⁻¹)_ij c_j (zero on the observed features, as the
    formula's other terms cancel there). Returns as :func:`_condition_block`.
    """
    tied = prec_chol.ndim == 2
    if tied:
        prec_chol = prec_chol[None]
    root = _invert_lower_unblocked(_t(prec_chol))  # (Uᵀ)⁻¹: Σ = root rootᵀ
    covariance = root @ _t(root)  # (K or 1, D, D)
    centred = data_t[None] - means[:, :, None]  # (K, D, n)
    onehot, index = _missing_slots(observed_t, size)  # the observed features
    used = jnp.any(onehot, axis=1)  # (s, n)
    residual = jnp.take_along_axis(centred, index[None], axis=1)  # (K, s, n)
    residual = jnp.where(used[None], residual, 0)
    solved, half, weights_o, factor, _ = _factor_by_entries(
        _slot_block(covariance, index, used), residual
    )  # L⁻¹ z_o, ½ log|Σ_oo|, Σ_oo⁻¹ z_o, L
    maha = _sum_of_squares(solved, axis=0)
    log_det = -half
    # Columns of Σ at the observed features, zero for padded slots.
    columns = jnp.stack(
        [
            jnp.take(covariance, index[i], axis=2) * used[i].astype(data_t.dtype)
            for i in range(size)
        ]
    )  # (s, K or 1, D, n)
    completed = sum(c * w[:, None, :] for c, w in zip(columns, weights_o))
    rows = _inverse_factor_rows(_invert_stacked(factor), columns)  # u_i

    def moments(resp):
        weights = resp.T[:, None, :]  # (K, 1, n)
        counts = jnp.sum(resp, axis=0)
        sums, second = _weighted_moments(completed, weights, tied)
        if tied:
            total = jnp.sum(weights, axis=0, keepdims=True)
            removed = _weighted_outer(rows, total, tied)
            return sums, second + jnp.sum(counts) * covariance[0] - removed
        removed = _weighted_outer(rows, weights, tied)
        return sums, second + counts[:, None, None] * covariance - removed

    return maha, log_det, moments


def _condition_either_side(data_t, observed_t, means, prec_chol):
    """Condition each row on the smaller of its missing and observed blocks.

    For 9 to 16 features: a row with at most 8 missing features conditions
    on its missing block (:func:`_condition`), any other has at most 7
    observed ones (:func:`_condition_observed`). Both run at size 8 on the
    whole sub-block, each with the other's rows made trivial (complete, or
    with nothing observed) and weighted zero: in place of one factorisation
    of size D per row and component, which took 33 ms for a 512-row block at
    D = 16, K = 8 by batched LAPACK calls on a 2-core CPU.
    """
    size = _LARGEST_SMALL_SIZE
    many = jnp.sum(~observed_t, axis=0) > size  # (n,)
    by_missing = _condition_block(size, data_t, observed_t | many, means, prec_chol)
    by_observed = _condition_observed(data_t, observed_t & many, means, prec_chol, size)
    maha = jnp.where(many, by_observed[0], by_missing[0])
    log_det = jnp.where(many, by_observed[1], by_missing[1])

    def moments(resp):
        sums_m, second_m = by_missing[2](jnp.where(many[:, None], 0, resp))
        sums_o, second_o = by_observed[2](jnp.where(many[:, None], resp, 0))
        return sums_m + sums_o, second_m + second_o

    return maha, log_det, moments


def _matrix_missing_moments(X, observed, resp, means, prec_chol):
    """:func:`_conditioned_moments` over all rows, each conditioned at ``means``."""

    def compute(size, data_t, observed_t, resp):
        return _condition_block(size, data_t, observed_t, means, prec_chol)[2](resp)

    sums, second = _by_missing_size(compute, X, observed, resp, n_features=X.shape[1])
    return jnp.sum(sums, axis=0), jnp.sum(second, axis=0)


def _matrix_missing_pass(X, observed, weights, responsibilities, means, prec_chol):
    """E-step and statistics with one conditioning per block of rows.

    ``responsibilities(maha, log_det, observed, weights)`` turns the observed
    blocks' Mahalanobis terms and ½ log|Σ_oo⁻¹| (n, K) into sample-weighted
    responsibilities (n, K) and the block's summed objective. Returns
    ``(Σ_n r_nk, sums, second, objective)`` as :func:`_matrix_missing_moments`.
    """

    def compute(size, data_t, observed_t, weights):
        maha, log_det, moments = _condition_block(
            size, data_t, observed_t, means, prec_chol
        )
        log_det = jnp.broadcast_to(log_det, maha.shape)
        resp, total = responsibilities(maha.T, log_det.T, observed_t.T, weights)
        sums, second = moments(resp)
        return jnp.sum(resp, axis=0), sums, second, total

    parts = _by_missing_size(compute, X, observed, weights, n_features=X.shape[1])
    return tuple(jnp.sum(part, axis=0) for part in parts)


def _missing_pass_in_two(
    kernel, X, observed, weights, responsibilities, means, prec_chol
):
    """:func:`_matrix_missing_pass` for kernels with nothing to share: two passes."""
    maha, log_det = kernel.missing_mahalanobis(X, observed, means, prec_chol)
    resp, total = responsibilities(maha, log_det, observed, weights)
    sums, second = kernel.missing_second_moments(X, observed, resp, means, prec_chol)
    return jnp.sum(resp, axis=0), sums, second, total


def _matrix_conditional_moments(X, observed, means, prec_chol):
    """x̂_nk (N, K, D) and Cov[x | x_o, k] embedded in (N, K, D, D)."""
    n_features = X.shape[1]
    conditioned = _condition(X.T, observed.T, means, prec_chol, n_features)
    completed = _completed(conditioned) + means[:, :, None]
    inverse = _inverse_of_factor(conditioned)
    rows = jnp.stack(_inverse_factor_rows(inverse, conditioned.onehot))
    covariance = jnp.einsum("skdn,sken->nkde", rows, rows)
    covariance = jnp.broadcast_to(
        covariance, (X.shape[0], *completed.shape[:2], n_features)
    )
    return jnp.moveaxis(completed, 2, 0), covariance


def _diag_missing_mahalanobis(X, observed, means, precisions):
    """Σ_{d∈o} p_kd (x_nd − μ_kd)² and ½ Σ_{d∈o} log p_kd, both (N, K)."""
    data_t = X.T
    observed_t = observed.T.astype(X.dtype)

    def one_component(args):
        mean_k, precision_k = args
        return precision_k @ (observed_t * jnp.square(data_t - mean_k[:, None]))

    maha = _map_components(one_component, (means, precisions), *X.shape).T
    return maha, 0.5 * (observed_t.T @ jnp.log(precisions).T)


def _diag_missing_moments(X, observed, resp, means, precisions):
    """Σ r (x̂ − μ) and Σ r [(x̂ − μ)² + σ² on the missing features], (K, D) each."""
    data_t = X.T
    observed_t = observed.T.astype(X.dtype)

    def one_component(args):
        resp_k, mean_k, precision_k = args
        centred = observed_t * (data_t - mean_k[:, None])
        missing = (1 - observed_t) @ resp_k
        return centred @ resp_k, (centred * centred) @ resp_k + missing / precision_k

    return _map_components(one_component, (resp.T, means, precisions), *X.shape)


def _diag_conditional_moments(X, observed, means, precisions):
    """x̂_nk (N, K, D) and the conditional variances (N, K, D)."""
    completed = jnp.where(observed[:, None, :], X[:, None, :], means[None])
    variances = jnp.where(observed[:, None, :], 0, 1 / precisions[None])
    return completed, variances


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

    # Missing values (NaN entries of X, given as zeros and a mask)

    @staticmethod
    def missing_mahalanobis(X, observed, means, prec_chol):
        """Observed-block Mahalanobis terms and ½ log|Σ_k,oo⁻¹|, (N, K) each."""
        return _matrix_missing_mahalanobis(X, observed, means, prec_chol)

    @staticmethod
    def missing_second_moments(X, observed, resp, means, prec_chol):
        """Statistics of the completed data, centred at the conditioning means."""
        return _matrix_missing_moments(X, observed, resp, means, prec_chol)

    @staticmethod
    def missing_posterior_moments(
        X, observed, weights, responsibilities, means, prec_chol
    ):
        """Counts, sums, second moments and objective of one block, one conditioning."""
        return _matrix_missing_pass(
            X, observed, weights, responsibilities, means, prec_chol
        )

    @staticmethod
    def conditional_moments(X, observed, means, prec_chol):
        """E[x | x_o, k] (N, K, D) and Cov[x | x_o, k] (N, K, D, D)."""
        return _matrix_conditional_moments(X, observed, means, prec_chol)

    @staticmethod
    def expected_mahalanobis(completed, cond_cov, means, prec_chol):
        """E[(x − μ_k)ᵀ Σ_k⁻¹ (x − μ_k)] = maha(x̂) + tr(Σ_k⁻¹ C), (N, K)."""
        projected = jnp.einsum("nkd,kde->nke", completed - means, prec_chol)
        precision = prec_chol @ _t(prec_chol)
        trace = jnp.einsum("kde,nkde->nk", precision, cond_cov)
        return jnp.sum(jnp.square(projected), axis=-1) + trace

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

    # Missing values (NaN entries of X, given as zeros and a mask)

    @staticmethod
    def missing_mahalanobis(X, observed, means, prec_chol):
        """Observed-block Mahalanobis terms and ½ log|Σ_oo⁻¹|, (N, K) each."""
        return _matrix_missing_mahalanobis(X, observed, means, prec_chol)

    @staticmethod
    def missing_second_moments(X, observed, resp, means, prec_chol):
        """Statistics of the completed data, centred at the conditioning means.

        The completed samples differ between components, so the pooled scatter
        is summed over components directly and the Gram matrix is zero.
        """
        sums, scatter = _matrix_missing_moments(X, observed, resp, means, prec_chol)
        n_components = means.shape[0]
        gram = jnp.zeros((n_components, n_components), resp.dtype)
        return sums, (scatter, gram)

    @staticmethod
    def missing_posterior_moments(
        X, observed, weights, responsibilities, means, prec_chol
    ):
        """Counts, sums, second moments and objective of one block, one conditioning."""
        counts, sums, scatter, total = _matrix_missing_pass(
            X, observed, weights, responsibilities, means, prec_chol
        )
        gram = jnp.zeros((means.shape[0],) * 2, scatter.dtype)
        return counts, sums, (scatter, gram), total

    @staticmethod
    def conditional_moments(X, observed, means, prec_chol):
        """E[x | x_o, k] (N, K, D) and Cov[x | x_o, k] (N, K, D, D)."""
        return _matrix_conditional_moments(X, observed, means, prec_chol)

    @staticmethod
    def expected_mahalanobis(completed, cond_cov, means, prec_chol):
        """E[(x − μ_k)ᵀ Σ⁻¹ (x − μ_k)] = maha(x̂) + tr(Σ⁻¹ C), (N, K)."""
        projected = (completed - means) @ prec_chol
        precision = prec_chol @ _t(prec_chol)
        trace = jnp.einsum("de,nkde->nk", precision, cond_cov)
        return jnp.sum(jnp.square(projected), axis=-1) + trace

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

    # Missing values (NaN entries of X, given as zeros and a mask)

    @staticmethod
    def missing_mahalanobis(X, observed, means, prec_chol):
        """Σ_{d∈o} (x_d − μ_kd)²/σ²_kd and ½ Σ_{d∈o} log σ⁻²_kd, (N, K) each."""
        precisions = jnp.broadcast_to(jnp.square(prec_chol).T, means.shape[::-1]).T
        return _diag_missing_mahalanobis(X, observed, means, precisions)

    @staticmethod
    def missing_second_moments(X, observed, resp, means, prec_chol):
        """Statistics of the completed data (σ²_kd added where x_d is missing)."""
        precisions = jnp.broadcast_to(jnp.square(prec_chol).T, means.shape[::-1]).T
        return _diag_missing_moments(X, observed, resp, means, precisions)

    # Nothing is shared between the density and the statistics here.
    missing_posterior_moments = classmethod(_missing_pass_in_two)

    @staticmethod
    def conditional_moments(X, observed, means, prec_chol):
        """E[x | x_o, k] (N, K, D) and the conditional variances (N, K, D)."""
        precisions = jnp.broadcast_to(jnp.square(prec_chol).T, means.shape[::-1]).T
        return _diag_conditional_moments(X, observed, means, precisions)

    @staticmethod
    def expected_mahalanobis(completed, cond_cov, means, prec_chol):
        """E[Σ_d (x_d − μ_kd)²/σ²_kd] over the conditional distribution, (N, K)."""
        precisions = jnp.broadcast_to(jnp.square(prec_chol).T, means.shape[::-1]).T
        return jnp.sum(precisions * (jnp.square(completed - means) + cond_cov), -1)

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

    # Missing values: as for diagonal covariances, with σ²_k for every feature

    missing_mahalanobis = staticmethod(_Diag.missing_mahalanobis)
    missing_second_moments = staticmethod(_Diag.missing_second_moments)
    missing_posterior_moments = classmethod(_missing_pass_in_two)
    conditional_moments = staticmethod(_Diag.conditional_moments)
    expected_mahalanobis = staticmethod(_Diag.expected_mahalanobis)

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
