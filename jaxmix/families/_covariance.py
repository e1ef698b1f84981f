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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


class _Full:
    """One full covariance matrix per component."""

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


class _Tied:
    """One covariance matrix shared by all components, normalised by N."""

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


class _Diag:
    """One diagonal covariance per component."""

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


class _Spherical:
    """One variance per component, shared by all features."""

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


KERNELS = {"full": _Full, "tied": _Tied, "diag": _Diag, "spherical": _Spherical}
COVARIANCE_TYPES = tuple(KERNELS)


def covariances_from_precisions(precisions: np.ndarray, covariance_type: str):
    """Host-side inverse of user-given precisions (scikit-learn's precisions_init)."""
    precisions = np.asarray(precisions)
    if covariance_type in ("full", "tied"):
        lower = np.linalg.cholesky(precisions)
        eye = np.broadcast_to(np.eye(precisions.shape[-1]), precisions.shape)
        inv_lower = np.linalg.solve(lower, eye)
        return np.swapaxes(inv_lower, -1, -2) @ inv_lower
    return 1.0 / precisions
