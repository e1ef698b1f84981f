r"""Low-rank approximation by truncated SVD, for matrices and images.

By the Eckart–Young theorem, keeping the k largest singular values of
:math:`A = U \operatorname{diag}(s) Vᵀ` gives the best rank-k approximation
:math:`A_k = U_k \operatorname{diag}(s_k) V_kᵀ` in Frobenius (and spectral)
norm, with error :math:`‖A − A_k‖_F = \sqrt{Σ_{i>k} s_i^2}`. Storing the factors
takes k(H + W + 1) numbers instead of H·W, which is the compression.

Images are (H, W) for grey or (H, W, C) for colour; a colour image is
approximated channel by channel. Integer images (e.g. ``uint8``) are converted
to JAX's default float dtype; results are not clipped to the pixel range.
In :func:`truncated_svd` the rank is static (it fixes the shapes of the
factors); :func:`low_rank_approximation` zeroes the discarded singular values
instead, so changing the rank does not recompile.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp

Array = jax.Array


def _as_float(array) -> Array:
    array = jnp.asarray(array)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.result_type(float))
    return array


def _check_rank(rank, shape) -> int:
    largest = min(shape[-2:])
    if (
        isinstance(rank, bool)
        or not isinstance(rank, numbers.Integral)
        or not 1 <= rank <= largest
    ):
        raise ValueError(
            f"rank must be an integer in [1, {largest}] for a {shape[-2]}×{shape[-1]} "
            f"matrix, got {rank!r}"
        )
    return int(rank)


def _channels_first(image) -> Array:
    """(H, W) → (H, W); (H, W, C) → (C, H, W), after checking the shape."""
    image = _as_float(image)
    if image.ndim == 2:
        return image
    if image.ndim == 3:
        return jnp.moveaxis(image, -1, 0)
    raise ValueError(f"image must have shape (H, W) or (H, W, C), got {image.shape}")


@functools.partial(jax.jit, static_argnames="rank")
def _truncated_svd(matrix: Array, rank: int) -> tuple[Array, Array, Array]:
    u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
    return u[..., :rank], s[..., :rank], vt[..., :rank, :]


def truncated_svd(A: Array, rank: int) -> tuple[Array, Array, Array]:
    r"""The k leading singular triplets of a matrix (or a stack of matrices).

    Args:
      A: a matrix (M, N), or a stack (..., M, N) factorised matrix by matrix.
      rank: number k of singular values kept (static), 1 ≤ k ≤ min(M, N).

    Returns:
      ``(U, s, Vt)`` with shapes (..., M, k), (..., k) and (..., k, N), singular
      values in decreasing order, so that ``(U * s[..., None, :]) @ Vt`` is the
      best rank-k approximation of A.

    Raises:
      ValueError: if A is not at least 2-D or the rank is out of range.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxmix import lowrank
      >>> U, s, Vt = lowrank.truncated_svd(jnp.diag(jnp.array([3.0, 2.0, 1.0])), 2)
      >>> s
      Array([3., 2.], dtype=float32)
    """
    A = _as_float(A)
    if A.ndim < 2:
        raise ValueError(f"A must be a matrix (M, N) or a stack of them, got {A.shape}")
    return _truncated_svd(A, _check_rank(rank, A.shape))


@jax.jit
def _reconstruct(matrix: Array, rank: Array) -> Array:
    # The rank is traced: singular values past it are zeroed instead of sliced
    # off, so one compiled program serves every rank of a given image shape.
    u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
    s = jnp.where(jnp.arange(s.shape[-1]) < rank, s, 0)
    return (u * s[..., None, :]) @ vt


def low_rank_approximation(image: Array, rank: int) -> Array:
    r"""Best rank-k approximation of a grey or colour image (per channel).

    Args:
      image: (H, W) grey or (H, W, C) colour image, any numeric dtype.
      rank: number k of singular values kept per channel, 1 ≤ k ≤ min(H, W);
        changing it does not recompile.

    Returns:
      The approximation, same shape as ``image``, floating point, not clipped.

    Raises:
      ValueError: if the image shape or the rank is not valid.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxmix import lowrank
      >>> image = jnp.outer(jnp.arange(4.0), jnp.ones(3))  # rank one
      >>> bool(jnp.allclose(lowrank.low_rank_approximation(image, 1), image, atol=1e-5))
      True
    """
    stacked = _channels_first(image)
    approximation = _reconstruct(stacked, _check_rank(rank, stacked.shape))
    return approximation if stacked.ndim == 2 else jnp.moveaxis(approximation, 0, -1)


@jax.jit
def _singular_values(matrix: Array) -> Array:
    return jnp.linalg.svd(matrix, compute_uv=False)


def singular_values(image: Array) -> Array:
    """Singular values of a grey image, or of each channel of a colour image.

    Args:
      image: (H, W) grey or (H, W, C) colour image.

    Returns:
      Decreasing singular values, shape (min(H, W),) for grey and
      (C, min(H, W)) for colour.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxmix import lowrank
      >>> lowrank.singular_values(jnp.diag(jnp.array([1.0, 5.0])))
      Array([5., 1.], dtype=float32)
    """
    return _singular_values(_channels_first(image))


def approximation_error(image: Array, approximation: Array, *, relative=False) -> Array:
    r"""Frobenius norm of the difference ‖image − approximation‖_F.

    Over all channels of a colour image. For a rank-k truncated SVD this equals
    :math:`\sqrt{Σ_{i>k} s_i^2}` (Eckart–Young), summed over channels.

    Args:
      image: the original, (H, W) or (H, W, C).
      approximation: an array of the same shape.
      relative: if True, divide by ‖image‖_F.

    Returns:
      The error, a scalar.

    Raises:
      ValueError: if the shapes differ.
    """
    image, approximation = _as_float(image), _as_float(approximation)
    if image.shape != approximation.shape:
        raise ValueError(
            f"image and approximation must have the same shape, got {image.shape} "
            f"and {approximation.shape}"
        )
    error = jnp.linalg.norm((image - approximation).reshape(-1))
    return error / jnp.linalg.norm(image.reshape(-1)) if relative else error


def compression_ratio(shape: tuple[int, ...], rank: int) -> float:
    r"""Numbers stored by the image over numbers stored by its rank-k factors.

    An (H, W[, C]) image holds H·W·C numbers; its rank-k truncated SVD holds
    k(H + W + 1)·C (U_k, V_k and the k singular values per channel), so the
    ratio is H·W / (k(H + W + 1)). Above one means the factors are smaller.

    Args:
      shape: image shape (H, W) or (H, W, C).
      rank: number k of singular values kept, 1 ≤ k ≤ min(H, W).

    Returns:
      The ratio, a Python float.

    Raises:
      ValueError: if the shape or the rank is not valid.

    Examples:
      >>> from jaxmix import lowrank
      >>> lowrank.compression_ratio((100, 99), 10)
      4.95
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) or (H, W, C), got {shape}")
    height, width = shape[:2]
    rank = _check_rank(rank, (height, width))
    return height * width / (rank * (height + width + 1))
