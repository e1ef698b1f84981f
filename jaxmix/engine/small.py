r"""EM for many small Gaussian mixtures at once, written elementwise.

Thousands of fits of a few features and components (one small mixture per
cell, pixel or sensor) spend their time, in the general engine, on batched
matrix products and reductions over axes of length 2 or 3: shapes that no
matrix unit or vector lane fills. Here a slice of data sets is fitted as one
problem whose arrays hold a value per data set and sample, and every
component and feature is a Python loop unrolled when the program is traced:
each operation of the E-step is elementwise over (N, B) planes, and each
operation of the M-step over rows of B per-set values, which XLA vectorises
across data sets and spreads over the cores. A D×D Cholesky factor, its
inverse and its log-determinant are a handful of such operations.

The statistics (the sums over samples of r_nk, r_nk x_n and r_nk x_n x_nᵀ)
are taken in one of two ways, chosen by the data's precision:

- float32: centred at every component's current mean, as in the general
  engine, with the data sets on the last (fast) axis, planes (N, B), and one
  reduction over samples per statistic;
- float64: as raw moments of the data centred at each data set's mean, for
  all components and statistics at once by one batched matrix product of the
  responsibilities (B, K, N) with fixed features (B, N, F), then moved to the
  current means. Measured twice as fast as the centred sums (N=500, D=2,
  K=3); the data sets where the move may cost precision are fitted again
  with centred statistics (:func:`imprecise`).

The iterations are those of :func:`jaxmix.engine.em.run_em` for a Gaussian
family without priors: the same centring at each data set's weighted mean,
the same M-step (guarded counts, ``reg_covar`` on every diagonal, the tied
covariance normalised by the total count), the same component mask (a weight
of exactly zero), objective, stopping rule, status codes and per-iteration
trace. Only the order of the floating-point operations differs, so a fit
agrees with the general engine's to round-off. One ``lax.while_loop`` runs
until every data set of the slice has stopped; a stopped data set no longer
changes, as under ``jax.vmap`` of the general loop.

The general engine stays the reference: priors, fixed variances, hard
assignments and the ``"means"`` criterion are fitted there, and so are
problems with more than :data:`MAX_FEATURES` features or
:data:`MAX_COMPONENTS` components (see :func:`applies`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine import em
from jaxmix.families.gaussian import Gaussian, GaussianParams

Array = jax.Array

#: Largest D and K fitted here; beyond them the general engine is used.
#: Measured on a 2-core CPU (N=200, 512 data sets, full covariance, float64):
#: this path took 2.5-4x less CPU time than the general engine up to D=4,
#: K=8, compiling in about the same time (10 s); at D=8-12 or K=16-32 it was
#: still about 2x faster, but compiled in 15-22 s against 6-10 s, and its
#: per-sample statistics grow as K·D².
MAX_FEATURES = 4
MAX_COMPONENTS = 8

_LOG_2PI = math.log(2 * math.pi)

#: Compiler options of this path's programs. XLA's CPU backend vectorises
#: loops with 256-bit registers unless told otherwise, also on CPUs with
#: 512-bit ones; this path is elementwise arithmetic over long planes, where
#: the wider vectors pay. Measured on a 2-core Xeon with AVX-512 (N=500,
#: D=2, K=3, full, 50 iterations, process CPU time per data set): float64
#: 0.81 → 0.71 ms, float32 0.64 → 0.57 ms. Only XLA's CPU backend reads
#: it, and a CPU without 512-bit vectors keeps its own width.
COMPILER_OPTIONS = {"xla_cpu_prefer_vector_width": 512}


def applies(family, n_components: int, n_features: int, *, hard, criterion) -> bool:
    """Whether a fit of this family and shape runs on the small-problem path.

    Exactly the Gaussian family (not a subclass, which may change its
    densities) with maximum-likelihood updates: no Dirichlet or
    normal-inverse-Wishart prior, no fixed variance and no missing
    values; soft assignments and the objective criterion; at most
    :data:`MAX_FEATURES` features and :data:`MAX_COMPONENTS` components.
    This path is one family's fast path, so it asks which family it has,
    which the general engine never does.
    """
    return (
        type(family) is Gaussian
        and not family.missing_values
        and family.weight_concentration is None
        and family.covariance_prior is None
        and family.variance is None
        and not hard
        and criterion == "objective"
        and 1 <= n_features <= MAX_FEATURES
        and 1 <= n_components <= MAX_COMPONENTS
    )


def default_batch_size(n_samples: int, n_init: int = 1) -> int:
    """Data sets per slice: about 2^17 samples (N × data sets × restarts) a slice.

    Measured on a 2-core CPU (N=500, D=2, K=3, full, 2000 data sets), with
    both cores free: slices of 256 data sets ran best in float32 (0.30 ms per
    data set, against 0.36 with 128 and 0.39-0.42 with 64, whose operations
    are too small to split over both cores) and as well as any in float64.
    With one core free, 32-64 data sets ran best in float32 (their planes stay
    in cache) by 15-20%.
    """
    return max(1, (1 << 17) // max(1, n_samples * n_init))


def spreads(Xs) -> np.ndarray:
    """Σ_d (max_n x_nd − min_n x_nd)² per data set (B,): a bound on ‖x_n − x̄‖²."""
    xp = jnp if isinstance(Xs, jax.Array) else np
    return np.asarray(xp.sum(xp.square(xp.ptp(Xs, axis=1)), axis=-1), np.float64)


def uses_moments(Xs) -> bool:
    """Whether the statistics come from raw moments: float64 data (see below)."""
    return jnp.result_type(Xs) == jnp.float64


def imprecise(family, spread: np.ndarray, result) -> np.ndarray:
    r"""Data sets whose raw-moment fit may be less precise than the general engine's.

    In float64 the statistics are sums of r_nk·f(x_n) for fixed features
    f = (1, x, x xᵀ) of the data centred at each data set's mean, taken by one
    matrix product: about twice as fast as centring the data at every
    component's current mean c_k, as the general engine does. Moving them to
    the current means, S2 = M2 − c M1ᵀ − M1 cᵀ + M0 c cᵀ, cancels: a covariance
    loses about ε·s² of absolute precision (s² the data set's spread) where the
    general engine loses ε·λ (λ its own variances). That is round-off as long
    as ε·s² stays far below the data set's covariances; this flags the data
    sets where it may not:

    - ε·s² > 1e-12·λ_max, λ_max the largest eigenvalue among the covariances
      of the components of positive weight: the covariances could differ from
      the general engine's by more than 1e-12 of their scale (components far
      narrower than the spread of the data);
    - 1000·ε·s² > λ_min, the smallest such eigenvalue: a component collapsed
      onto repeated points (λ_min ≈ ``reg_covar``) could stop being positive
      definite where the general engine's stays so;
    - the fit met a non-finite value.

    The flagged data sets are fitted again with centred statistics.

    Args:
      family: the Gaussian family.
      spread: :func:`spreads` of the data sets (B,).
      result: the fits (params batched over B, ``status``).

    Returns:
      A boolean NumPy array (B,).
    """
    params = jax.device_get(result.params)
    kernel = _KERNELS[family.covariance_type]
    smallest, largest = kernel.variance_range(
        np.asarray(params.covariances, np.float64)
    )
    active = np.asarray(params.weights) > 0
    smallest = np.where(active, smallest, np.inf).min(axis=1)
    largest = np.where(active, largest, 0.0).max(axis=1)
    loss = float(jnp.finfo(jnp.float64).eps) * spread
    # Written so that NaN covariances count as imprecise.
    precise = (loss <= 1e-12 * largest) & (1000 * loss <= smallest)
    return ~precise | (np.asarray(result.status) == em.NONFINITE)


# -- covariance kernels, elementwise over data sets ------------------------------
#
# Parameters are held with the data sets on the last axis: weights (K, B), means
# (K, D, B), covariances full (K, D, D, B), tied (D, D, B), diag (K, D, B),
# spherical (K, B). Per-component quantities of the parameter updates are (K, B)
# arrays, so that one operation serves every component; the (N, B) planes of the
# E-step are built per component. ``centred[k][d]`` is the plane x_nd − μ_kd and
# ``resp[k]`` the plane of sample-weighted responsibilities r_nk w_n.
#
# Each kernel provides:
#
# - ``factor(covariances, n_features) -> (factor, log_det)``: what the
#   Mahalanobis term needs, and log|U_k| as (K, B) (U the precision Cholesky
#   factor);
# - ``mahalanobis(factor, k, centred_k) -> (N, B)``;
# - ``second_moments(resp, centred, n_features)``: per-sample planes whose sums
#   over samples are the centred second moments, as a list of groups (one per
#   component, or one pooled group for ``tied``);
# - ``features(planes) -> list``: the products of centred data whose raw sums
#   the float64 statistics need (x_d x_e, x_d², or ‖x‖²);
# - ``centre_moments(second, counts, first, centre)``: those raw sums moved to
#   the current means, in the stacked form of ``second_moments``' sums;
# - ``covariances(second, counts, delta, total, reg_covar, n_features)``: the
#   M-step from the summed moments (groups stacked as an array), the guarded
#   counts (K, B), the mean moves δ_k = S1_k / N_k (K, D, B) and the total count;
# - ``variance_range(covariances)``: host-side, in the general (B, …) layout,
#   each component's smallest and largest eigenvalues, (B, K) each, or (B, 1)
#   for ``tied``.


def _inverse_cholesky(entry, n_features: int):
    r"""L⁻¹ and log|L⁻¹| for Σ = L Lᵀ, from a function giving Σ's (d, e) entries.

    Column by column (L_jj = √(Σ_jj − Σ_{m<j} L_jm²), L_ij = (Σ_ij −
    Σ_{m<j} L_im L_jm) / L_jj), then the inverse row by row by forward
    substitution (M_ii = 1/L_ii, M_ij = −M_ii Σ_{j≤m<i} L_im M_mj), the same
    recurrences as the general kernels'. Every entry is an array of the same
    shape (one value per component and data set). The precision Cholesky
    factor is U = Mᵀ, so the Mahalanobis term ‖(x − μ)ᵀU‖² is ‖M (x − μ)‖², and
    log|U| = Σ_i log M_ii. A matrix that is not positive definite gives NaN.
    """
    lower = [[None] * n_features for _ in range(n_features)]
    for j in range(n_features):
        pivot = entry(j, j) - sum(lower[j][m] ** 2 for m in range(j))
        lower[j][j] = jnp.sqrt(pivot)
        for i in range(j + 1, n_features):
            dot = sum(lower[i][m] * lower[j][m] for m in range(j))
            lower[i][j] = (entry(i, j) - dot) / lower[j][j]
    inverse = [[None] * n_features for _ in range(n_features)]
    for i in range(n_features):
        inverse[i][i] = 1 / lower[i][i]
        for j in range(i):
            dot = sum(lower[i][m] * inverse[m][j] for m in range(j, i))
            inverse[i][j] = -dot * inverse[i][i]
    log_det = sum(jnp.log(inverse[i][i]) for i in range(n_features))
    return inverse, log_det


def _symmetric_entry(matrix):
    """Entries of ½(Σ + Σᵀ) for Σ (…, D, D, B), as the general kernels symmetrise."""

    def entry(d, e):
        if d == e:
            return matrix[..., d, d, :]
        return 0.5 * (matrix[..., d, e, :] + matrix[..., e, d, :])

    return entry


def _whitened_norm(inverse, centred):
    """‖M y‖² for lower-triangular M (rows of (B,) values) and y (D planes (N, B))."""
    total = 0
    for i, row in enumerate(inverse):
        projected = sum(row[j] * centred[j] for j in range(i + 1))
        total = total + jnp.square(projected)
    return total


def _upper_pairs(n_features: int):
    return [(d, e) for d in range(n_features) for e in range(d, n_features)]


def _square_from_upper(upper: Array, n_features: int) -> Array:
    """(…, D, D, B) symmetric matrices from their upper triangles (…, P, B)."""
    index = {pair: i for i, pair in enumerate(_upper_pairs(n_features))}
    rows = [
        jnp.stack(
            [upper[..., index[min(d, e), max(d, e)], :] for e in range(n_features)],
            axis=-2,
        )
        for d in range(n_features)
    ]
    return jnp.stack(rows, axis=-3)


def _centre_pair(second, counts, first, centre, d, e):
    r"""Σ_n r (x_d − c_d)(x_e − c_e) from raw sums.

    That is M2_de − c_d M1_e − c_e M1_d + M0 c_d c_e, per component (arrays
    (K, B)).
    """
    return (
        second
        - centre[:, d] * first[:, e]
        - centre[:, e] * first[:, d]
        + counts * centre[:, d] * centre[:, e]
    )


def _eye(n_features: int, dtype) -> Array:
    return jnp.eye(n_features, dtype=dtype)[:, :, None]


class _Full:
    @staticmethod
    def variance_range(covariances: np.ndarray):
        eigenvalues = np.linalg.eigvalsh(covariances)  # ascending
        return eigenvalues[..., 0], eigenvalues[..., -1]

    @staticmethod
    def factor(covariances, n_features):
        return _inverse_cholesky(_symmetric_entry(covariances), n_features)

    @staticmethod
    def mahalanobis(factor, k, centred):
        rows = [[value[k] for value in row[: i + 1]] for i, row in enumerate(factor)]
        return _whitened_norm(rows, centred)

    @staticmethod
    def second_moments(resp, centred, n_features):
        pairs = _upper_pairs(n_features)
        return [
            [r * y[d] * y[e] for d, e in pairs]
            for r, y in zip(resp, centred, strict=True)
        ]

    @staticmethod
    def features(planes):
        return [planes[d] * planes[e] for d, e in _upper_pairs(len(planes))]

    @staticmethod
    def centre_moments(second, counts, first, centre):
        pairs = _upper_pairs(first.shape[1])
        return jnp.stack(
            [
                _centre_pair(second[:, p], counts, first, centre, d, e)
                for p, (d, e) in enumerate(pairs)
            ],
            axis=1,
        )

    @staticmethod
    def covariances(second, counts, delta, total, reg_covar, n_features):
        del total
        moments = _square_from_upper(second, n_features)  # (K, D, D, B)
        cov = moments / counts[:, None, None] - delta[:, :, None] * delta[:, None, :]
        return cov + reg_covar * _eye(n_features, cov.dtype)


class _Tied:
    @staticmethod
    def variance_range(covariances: np.ndarray):
        eigenvalues = np.linalg.eigvalsh(covariances)
        return eigenvalues[:, :1], eigenvalues[:, -1:]

    @staticmethod
    def factor(covariances, n_features):
        inverse, log_det = _inverse_cholesky(_symmetric_entry(covariances), n_features)
        return inverse, log_det[None]

    @staticmethod
    def mahalanobis(factor, k, centred):
        del k
        return _whitened_norm(factor, centred)

    @staticmethod
    def second_moments(resp, centred, n_features):
        # The pooled scatter Σ_k Σ_n r_nk (x_n − c_k)(x_n − c_k)ᵀ, summed over
        # components sample by sample: one sum per entry, not one per component.
        return [
            [
                sum(r * y[d] * y[e] for r, y in zip(resp, centred, strict=True))
                for d, e in _upper_pairs(n_features)
            ]
        ]

    features = staticmethod(_Full.features)

    @staticmethod
    def centre_moments(second, counts, first, centre):
        return jnp.sum(_Full.centre_moments(second, counts, first, centre), axis=0)[
            None
        ]

    @staticmethod
    def covariances(second, counts, delta, total, reg_covar, n_features):
        # (Σ_k S2_k − Σ_k N_k δ_k δ_kᵀ) / N: the general kernel's pooled scatter,
        # written without its K×K Gram matrix.
        moments = _square_from_upper(second[0], n_features)  # (D, D, B)
        moved = jnp.sum(
            counts[:, None, None] * delta[:, :, None] * delta[:, None, :], axis=0
        )
        cov = (moments - moved) / total
        return cov + reg_covar * _eye(n_features, cov.dtype)


class _Diag:
    @staticmethod
    def variance_range(covariances: np.ndarray):
        return covariances.min(axis=-1), covariances.max(axis=-1)

    @staticmethod
    def factor(covariances, n_features):
        del n_features
        scales = jax.lax.rsqrt(covariances)  # (K, D, B)
        return jnp.square(scales), jnp.sum(jnp.log(scales), axis=1)

    @staticmethod
    def mahalanobis(factor, k, centred):
        return sum(factor[k, d] * jnp.square(y_d) for d, y_d in enumerate(centred))

    @staticmethod
    def second_moments(resp, centred, n_features):
        del n_features
        return [
            [r * jnp.square(y_d) for y_d in y]
            for r, y in zip(resp, centred, strict=True)
        ]

    @staticmethod
    def features(planes):
        return [jnp.square(plane) for plane in planes]

    @staticmethod
    def centre_moments(second, counts, first, centre):
        return jnp.stack(
            [
                _centre_pair(second[:, d], counts, first, centre, d, d)
                for d in range(first.shape[1])
            ],
            axis=1,
        )

    @staticmethod
    def covariances(second, counts, delta, total, reg_covar, n_features):
        del total, n_features
        return second / counts[:, None] - jnp.square(delta) + reg_covar


class _Spherical:
    @staticmethod
    def variance_range(covariances: np.ndarray):
        return covariances, covariances

    @staticmethod
    def factor(covariances, n_features):
        scales = jax.lax.rsqrt(covariances)  # (K, B)
        return jnp.square(scales), n_features * jnp.log(scales)

    @staticmethod
    def mahalanobis(factor, k, centred):
        return factor[k] * sum(jnp.square(y_d) for y_d in centred)

    @staticmethod
    def second_moments(resp, centred, n_features):
        del n_features
        return [
            [r * sum(jnp.square(y_d) for y_d in y)]
            for r, y in zip(resp, centred, strict=True)
        ]

    @staticmethod
    def features(planes):
        return [sum(jnp.square(plane) for plane in planes)]

    @staticmethod
    def centre_moments(second, counts, first, centre):
        moved = sum(
            _centre_pair(0, counts, first, centre, d, d) for d in range(first.shape[1])
        )
        return (second[:, 0] + moved)[:, None]

    @staticmethod
    def covariances(second, counts, delta, total, reg_covar, n_features):
        # The mean over features of the diagonal variances, as the general
        # kernel averages them.
        del total
        spread = second[:, 0] / counts - jnp.sum(jnp.square(delta), axis=1)
        return spread / n_features + reg_covar


_KERNELS = {"full": _Full, "tied": _Tied, "diag": _Diag, "spherical": _Spherical}


# -- the loop ----------------------------------------------------------------------


class _State(NamedTuple):
    params: Any  # GaussianParams, data sets on the last axis
    log_likelihood: Array  # (B,)
    n_iter: Array  # (B,)
    status: Array  # (B,)
    step: Array  # ()  iterations run by the slice
    trace: Array  # (max_iter + 1, B)


def _guarded(counts: Array) -> Array:
    # jaxmix.families.mixing.guarded_counts, elementwise.
    return counts + 10 * jnp.finfo(counts.dtype).eps


def _responsibilities(kernel, factor, constants, means, active, planes, weights):
    """The E-step on (N, B) or (B, N) planes, parameters shaped to broadcast.

    Returns ``(resp, centred, log_norm)``: the K planes of sample-weighted
    responsibilities r_nk w_n, the planes x_nd − μ_kd per component, and the
    plane of weighted log-likelihoods w_n log p(x_n).
    """
    n_components, n_features = means.shape[:2]
    centred, log_probs = [], []
    for k in range(n_components):
        y = [planes[d] - means[k, d] for d in range(n_features)]
        log_prob = constants[k] - 0.5 * kernel.mahalanobis(factor, k, y)
        # A component of weight exactly zero takes no responsibility.
        log_probs.append(jnp.where(active[k], log_prob, -jnp.inf))
        centred.append(y)
    top = log_probs[0]
    for log_prob in log_probs[1:]:
        top = jnp.maximum(top, log_prob)
    exps = [jnp.exp(log_prob - top) for log_prob in log_probs]
    norm = sum(exps[1:], exps[0])
    log_norm = top + jnp.log(norm)
    scale = 1 / norm if weights is None else weights / norm
    resp = [e * scale for e in exps]
    return resp, centred, log_norm if weights is None else weights * log_norm


def _stack(nested) -> Array:
    if isinstance(nested, list):
        return jnp.stack([_stack(item) for item in nested])
    return nested


def _centred_sums(kernel, resp, centred, log_norm, n_features):
    """Statistics centred at the current means, as sums over axis 0 of (N, B) planes."""
    per_sample = {
        "log_likelihood": log_norm,
        "counts": resp,
        "first": [[r * y_d for y_d in y] for r, y in zip(resp, centred)],
        "second": kernel.second_moments(resp, centred, n_features),
    }
    sums = jax.tree.map(lambda values: jnp.sum(values, axis=0), per_sample)
    return (
        sums["log_likelihood"],
        _stack(sums["counts"]),
        _stack(sums["first"]),
        _stack(sums["second"]),
    )


def _moment_sums(kernel, resp, log_norm, features, means, n_features):
    """Statistics from raw moments about the data set's mean, by one matrix product.

    ``features`` (B, N, F) holds 1, x_d and the kernel's products of the
    centred data; the responsibilities (B, K, N) times them give every sum
    Σ_n r_nk f_n at once. The moments are then moved to the current means c_k:
    S1 = M1 − M0 c, S2 = M2 − c M1ᵀ − M1 cᵀ + M0 c cᵀ.
    """
    stacked = jnp.stack(resp, axis=1)  # (B, K, N)
    moments = jax.lax.dot_general(stacked, features, (((2,), (1,)), ((0,), (0,))))
    moments = jnp.moveaxis(moments, 0, -1)  # (K, F, B)
    counts = moments[:, 0]
    first = moments[:, 1 : 1 + n_features]
    shifted = first - counts[:, None] * means
    second = kernel.centre_moments(moments[:, 1 + n_features :], counts, first, means)
    return jnp.sum(log_norm, axis=-1), counts, shifted, second


def _em_step(family, data, weights, params, moments):
    """One E-step and M-step: the new params and the summed weighted log-likelihood.

    ``data`` holds the D centred data planes, (N, B) each, or with ``moments``
    a pair ``(planes, features)`` of (B, N) planes and the (B, N, F) features
    of :func:`_moment_sums`; ``weights`` the sample weights in the same layout
    or None (all ones).
    """
    kernel = _KERNELS[family.covariance_type]
    n_components, n_features = params.means.shape[:2]
    factor, log_det = kernel.factor(params.covariances, n_features)
    constants = jnp.log(params.weights) + log_det - 0.5 * n_features * _LOG_2PI
    active = params.weights > 0
    means = params.means
    if moments:
        planes, features = data
        # Per-set values broadcast along the samples, now the last axis.
        lift = lambda tree: jax.tree.map(lambda v: v[..., None], tree)
        resp, _, log_norm = _responsibilities(
            kernel,
            lift(factor),
            lift(constants),
            lift(means),
            lift(active),
            planes,
            weights,
        )
        ll_sum, counts, first, second = _moment_sums(
            kernel, resp, log_norm, features, means, n_features
        )
    else:
        resp, centred, log_norm = _responsibilities(
            kernel, factor, constants, means, active, data, weights
        )
        ll_sum, counts, first, second = _centred_sums(
            kernel, resp, centred, log_norm, n_features
        )
    counts = _guarded(counts)  # (K, B)
    delta = first / counts[:, None]  # (K, D, B)
    total = jnp.sum(counts, axis=0)
    covariances = kernel.covariances(
        second, counts, delta, total, family.reg_covar, n_features
    )
    if family.uniform_weights:
        weights_new = jnp.full_like(params.weights, 1.0 / n_components)
    else:
        weights_new = counts / total
    new_params = GaussianParams(weights_new, params.means + delta, covariances)
    return new_params, ll_sum


def _keep_zero_weights(new_weights: Array, weights: Array) -> Array:
    """:func:`jaxmix.engine.em.keep_zero_weights` for (K, B) weights, per data set."""
    active = weights > 0
    kept = jnp.where(active, new_weights, 0)
    kept = kept / jnp.sum(kept, axis=0)
    return jnp.where(jnp.all(active, axis=0), new_weights, kept)


def _all_finite(params) -> Array:
    """(B,): every parameter of the data set is finite."""
    finite = [
        jnp.all(jnp.isfinite(leaf), axis=tuple(range(leaf.ndim - 1)))
        for leaf in jax.tree.leaves(params)
    ]
    return jnp.logical_and.reduce(jnp.stack(finite), axis=0)


def _status(finite, done, n_iter, max_iter) -> Array:
    # The general loop's rule: NONFINITE before CONVERGED before MAX_ITER.
    return jnp.where(
        ~finite,
        em.NONFINITE,
        jnp.where(
            done, em.CONVERGED, jnp.where(n_iter >= max_iter, em.MAX_ITER, em.RUNNING)
        ),
    ).astype(jnp.int32)


def _to_last(tree):
    return jax.tree.map(lambda leaf: jnp.moveaxis(leaf, 0, -1), tree)


def _to_first(tree):
    return jax.tree.map(lambda leaf: jnp.moveaxis(leaf, -1, 0), tree)


def run_small(
    family, Xs: Array, params, tol, sample_weight, *, max_iter: int, moments=False
) -> em.FitResult:
    """EM on a stack of data sets, each exactly as :func:`jaxmix.engine.em.run_em`.

    Unjitted (:data:`fit_small_jit` is the compiled program); call it only where
    :func:`applies` holds.

    Args:
      family: a Gaussian family without priors or fixed variance.
      Xs: data sets, shape (B, N, D).
      params: starting params, each leaf with a leading axis B.
      tol: convergence threshold on the change of the objective.
      sample_weight: (B, N) non-negative weights (zeros mask padding) or None.
      max_iter: maximum number of iterations (static).
      moments: take the statistics as raw moments by one matrix product
        (static; meant for float64, see :func:`imprecise`) rather than centred
        at the current means.

    Returns:
      A :class:`jaxmix.engine.em.FitResult` whose fields have a leading axis B.
    """
    dtype = Xs.dtype
    n_sets, n_samples, n_features = Xs.shape
    data = jnp.transpose(Xs, (2, 1, 0))  # (D, N, B)
    if sample_weight is None:
        weights = None
        total_weight = jnp.full((n_sets,), n_samples, dtype)
        origin = jnp.sum(data, axis=1) / total_weight
    else:
        weights = jnp.asarray(sample_weight, dtype).T  # (N, B)
        total_weight = jnp.sum(weights, axis=0)
        origin = jnp.sum(data * weights, axis=1) / total_weight
    # Fit around each data set's weighted mean (moved back at the end), as the
    # general engine does for location families: float32 keeps its digits on
    # data far from the origin.
    planes = [data[d] - origin[d] for d in range(n_features)]
    if moments:
        planes = [plane.T for plane in planes]  # (B, N)
        weights = None if weights is None else weights.T
        kernel = _KERNELS[family.covariance_type]
        features = jnp.stack(
            [jnp.ones_like(planes[0]), *planes, *kernel.features(planes)], axis=-1
        )  # (B, N, F)
        data = (planes, features)
    else:
        data = planes
    params = _to_last(jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), params))
    params = params._replace(means=params.means - origin)
    tol = jnp.asarray(tol, dtype)

    def iteration(state: _State) -> _State:
        new_params, ll_sum = _em_step(family, data, weights, state.params, moments)
        objective = ll_sum / total_weight
        new_params = new_params._replace(
            weights=_keep_zero_weights(new_params.weights, state.params.weights)
        )
        finite = jnp.isfinite(objective) & _all_finite(new_params)
        done = jnp.abs(objective - state.log_likelihood) < tol
        running = state.status == em.RUNNING
        n_iter = state.n_iter + 1
        status = _status(finite, done, n_iter, max_iter)
        # A data set that has stopped keeps its state, as under vmap.
        update = running & finite
        return _State(
            params=jax.tree.map(
                lambda new, old: jnp.where(update, new, old), new_params, state.params
            ),
            log_likelihood=jnp.where(running, objective, state.log_likelihood),
            n_iter=jnp.where(running, n_iter, state.n_iter),
            status=jnp.where(running, status, state.status),
            step=state.step + 1,
            trace=state.trace.at[state.step].set(
                jnp.where(running, objective, jnp.nan)
            ),
        )

    start = _State(
        params=params,
        log_likelihood=jnp.full((n_sets,), -jnp.inf, dtype),
        n_iter=jnp.zeros((n_sets,), jnp.int32),
        status=jnp.full(
            (n_sets,), em.RUNNING if max_iter > 0 else em.MAX_ITER, jnp.int32
        ),
        step=jnp.zeros((), jnp.int32),
        trace=jnp.full((max_iter + 1, n_sets), jnp.nan, dtype),
    )
    final = jax.lax.while_loop(
        lambda state: jnp.any(state.status == em.RUNNING), iteration, start
    )
    params = final.params._replace(means=final.params.means + origin)
    return em.FitResult(
        params=_to_first(params),
        log_likelihood=final.log_likelihood,
        n_iter=final.n_iter,
        converged=final.status == em.CONVERGED,
        status=final.status,
        trace=final.trace[:max_iter].T,
    )


fit_small_jit = jax.jit(
    run_small,
    static_argnames=("max_iter", "moments"),
    compiler_options=COMPILER_OPTIONS,
)
