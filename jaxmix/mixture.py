r"""Mixture algebra: moments, sums, affine maps, sampling, marginals, conditionals.

Pure functions on :class:`~jaxmix.families.GaussianParams` (and, for the moments
and sampling of Bernoulli mixtures, on plain ``weights`` / ``means`` arrays).
Each takes the covariance type as a string (``"full"``, ``"tied"``, ``"diag"``,
``"spherical"``) or as a :class:`~jaxmix.families.Gaussian` family; the type is
static (it fixes shapes), the parameters are traced. The public functions check
shapes and then call module-level jitted kernels, so they work eagerly, inside a
user's ``jax.jit`` and under ``jax.vmap`` (vmap the function rather than passing
batched parameters).

Weights are assumed to sum to one. The mixture's moments are

.. math::
    E[x] = Σ_k π_k μ_k, \qquad
    Cov[x] = Σ_k π_k (Σ_k + μ_k μ_kᵀ) − E[x] E[x]ᵀ
           = Σ_k π_k Σ_k + Σ_k π_k (μ_k − E[x])(μ_k − E[x])ᵀ,

and the centred right-hand form is what is computed: it is a sum of positive
semi-definite terms and does not cancel when the means are far from zero.

Functions that change the covariance type (:func:`add`, :func:`affine`) return
``(params, covariance_type)``; the type is a Python string decided from static
information only, so inside ``jax.jit`` return the params and keep the string.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.families import covariance_kernels
from jaxmix.families.gaussian import GaussianParams

Array = jax.Array

COVARIANCE_TYPES = covariance_kernels.COVARIANCE_TYPES


# ----------------------------------------------------------------------------
# Checks (on shapes only, so they also run on tracers)
# ----------------------------------------------------------------------------


def _covariance_type(covariance_type) -> str:
    """The covariance type name from a string or a Gaussian family."""
    name = getattr(covariance_type, "covariance_type", covariance_type)
    if not isinstance(name, str) or name not in covariance_kernels.KERNELS:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES} or a Gaussian "
            f"family, got {covariance_type!r}"
        )
    return name


def _check_params(params: GaussianParams, covariance_type: str) -> tuple[int, int]:
    """(K, D) of Gaussian mixture params, after checking their shapes."""
    weights, means, covariances = (jnp.shape(x) for x in params)
    if len(means) != 2:
        raise ValueError(f"means must have shape (K, D), got {means}")
    n_components, n_features = means
    if weights != (n_components,):
        raise ValueError(
            f"weights must have shape ({n_components},) to match means {means}, "
            f"got {weights}"
        )
    expected = covariance_kernels.KERNELS[covariance_type].shape(
        n_components, n_features
    )
    if covariances != expected:
        raise ValueError(
            f"{covariance_type!r} covariances for K={n_components}, "
            f"D={n_features} must have shape {expected}, got {covariances}"
        )
    return n_components, n_features


def _prepare(params, covariance_type) -> tuple[GaussianParams, str, int, int]:
    covariance_type = _covariance_type(covariance_type)
    params = GaussianParams(*(jnp.asarray(x) for x in params))
    n_components, n_features = _check_params(params, covariance_type)
    return params, covariance_type, n_components, n_features


def _feature_indices(indices, n_features: int, what: str) -> np.ndarray:
    """Concrete, distinct, in-range integer feature indices as a numpy array."""
    try:
        array = np.asarray(indices)
    except jax.errors.TracerArrayConversionError:
        raise ValueError(f"{what} must be concrete (not traced)") from None
    if array.ndim != 1 or not (
        array.size == 0 or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{what} must be a 1-D sequence of integers, got {indices!r}")
    array = array.astype(np.int64)
    if np.any(array < -n_features) or np.any(array >= n_features):
        raise ValueError(
            f"{what} must lie in [0, {n_features}) for {n_features} features, "
            f"got {array.tolist()}"
        )
    array = np.where(array < 0, array + n_features, array)
    if np.unique(array).size != array.size:
        raise ValueError(f"{what} must not repeat a feature, got {array.tolist()}")
    return array


# ----------------------------------------------------------------------------
# Moments
# ----------------------------------------------------------------------------


@jax.jit
def _mean(weights: Array, means: Array) -> Array:
    return weights @ means


@functools.partial(jax.jit, static_argnames="covariance_type")
def _covariance_jit(params: GaussianParams, covariance_type: str) -> Array:
    weights, means, covariances = params
    centre = weights @ means
    deviations = means - centre
    between = jnp.einsum("k,kd,ke->de", weights, deviations, deviations)
    kernel = covariance_kernels.KERNELS[covariance_type]
    within = kernel.within(weights, covariances, means.shape[-1])
    return within + between


def mean(params: GaussianParams, covariance_type=None) -> Array:
    r"""Mean of a Gaussian mixture, :math:`E[x] = Σ_k π_k μ_k`.

    Args:
      params: the mixture's parameters.
      covariance_type: optional covariance type (string or Gaussian family); the
        mean does not depend on it, and if given it only serves to check shapes.

    Returns:
      The mean, shape (D,).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxmix import mixture
      >>> from jaxmix.families import GaussianParams
      >>> params = GaussianParams(jnp.array([0.25, 0.75]),
      ...                         jnp.array([[0.0], [4.0]]), jnp.array([1.0, 1.0]))
      >>> mixture.mean(params, "spherical")
      Array([3.], dtype=float32)
    """
    if covariance_type is not None:
        params, _, _, _ = _prepare(params, covariance_type)
    weights, means = _check_bernoulli(params.weights, params.means)
    return _mean(weights, means)


def covariance(params: GaussianParams, covariance_type="full") -> Array:
    r"""Covariance matrix of a Gaussian mixture.

    .. math::
        Cov[x] = Σ_k π_k Σ_k + Σ_k π_k (μ_k − E[x])(μ_k − E[x])ᵀ,

    which equals :math:`Σ_k π_k (Σ_k + μ_k μ_kᵀ) − E[x]E[x]ᵀ` but is computed
    without the cancellation of the raw second moment.

    Args:
      params: the mixture's parameters.
      covariance_type: ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"`` or a
        Gaussian family.

    Returns:
      The (D, D) covariance matrix.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxmix import mixture
      >>> from jaxmix.families import GaussianParams
      >>> params = GaussianParams(jnp.array([0.5, 0.5]),
      ...                         jnp.array([[-1.0], [1.0]]), jnp.array([1.0, 1.0]))
      >>> mixture.covariance(params, "spherical")  # 1 within + 1 between
      Array([[2.]], dtype=float32)
    """
    params, covariance_type, _, _ = _prepare(params, covariance_type)
    return _covariance_jit(params, covariance_type)


@jax.jit
def _bernoulli_covariance(weights: Array, means: Array) -> Array:
    centre = weights @ means
    deviations = means - centre
    between = jnp.einsum("k,kd,ke->de", weights, deviations, deviations)
    return jnp.diag(weights @ (means * (1 - means))) + between


def _check_bernoulli(weights, means) -> tuple[Array, Array]:
    """Weights (K,) and means (K, D) as arrays, after checking their shapes."""
    weights, means = jnp.asarray(weights), jnp.asarray(means)
    if means.ndim != 2 or weights.shape != means.shape[:1]:
        raise ValueError(
            "weights and means must have shapes (K,) and (K, D), got "
            f"{weights.shape} and {means.shape}"
        )
    return weights, means


def bernoulli_mean(weights: Array, means: Array) -> Array:
    r"""Mean of a mixture of Bernoullis, :math:`E[x] = Σ_k π_k θ_k`.

    Args:
      weights: mixing weights, shape (K,).
      means: success probabilities θ_kd, shape (K, D).

    Returns:
      The mean, shape (D,).
    """
    weights, means = _check_bernoulli(weights, means)
    return _mean(weights, means)


def bernoulli_covariance(weights: Array, means: Array) -> Array:
    r"""Covariance matrix of a mixture of Bernoullis.

    .. math::
        Cov[x] = Σ_k π_k (\operatorname{diag}(θ_k ⊙ (1 − θ_k)) + θ_k θ_kᵀ) − m mᵀ
               = Σ_k π_k \operatorname{diag}(θ_k ⊙ (1 − θ_k))
                 + Σ_k π_k (θ_k − m)(θ_k − m)ᵀ,

    with :math:`m = Σ_k π_k θ_k`, computed in the centred (second) form.

    Args:
      weights: mixing weights, shape (K,).
      means: success probabilities θ_kd, shape (K, D).

    Returns:
      The (D, D) covariance matrix.
    """
    weights, means = _check_bernoulli(weights, means)
    return _bernoulli_covariance(weights, means)


@functools.partial(jax.jit, static_argnames="n_samples")
def _bernoulli_sample(key, weights, means, n_samples):
    label_key, value_key = jax.random.split(key)
    labels = jax.random.categorical(label_key, jnp.log(weights), shape=(n_samples,))
    uniform = jax.random.uniform(value_key, (n_samples, means.shape[1]), means.dtype)
    return (uniform < means[labels]).astype(means.dtype), labels


def bernoulli_sample(
    key: Array, weights: Array, means: Array, n_samples: int
) -> tuple[Array, Array]:
    """Samples of a mixture of Bernoullis by its generative process.

    Each sample draws a component k with probability π_k, then every feature
    independently as Bernoulli(θ_kd).

    Args:
      key: a JAX random key.
      weights: mixing weights, shape (K,).
      means: success probabilities θ_kd, shape (K, D).
      n_samples: number of samples (static).

    Returns:
      ``(X, labels)``: binary samples (N, D) in the dtype of ``means`` and the
      component of each sample (N,).
    """
    weights, means = _check_bernoulli(weights, means)
    return _bernoulli_sample(key, weights, means, _check_count(n_samples))


# ----------------------------------------------------------------------------
# Sums and affine maps
# ----------------------------------------------------------------------------


def sum_covariance_type(type_x, type_y) -> str:
    """Covariance type of the sum of two independent Gaussian mixtures.

    The component covariances of x + y are Σ_k + Σ_l; the result is the least
    general type that holds them for every pair (k, l):

    - spherical + spherical → spherical;
    - diag + diag, diag + spherical → diag;
    - tied + tied → tied (every pair has the same Σ_x + Σ_y);
    - anything else (a full one, or tied with another type) → full.

    Args:
      type_x: covariance type of x (string or Gaussian family).
      type_y: covariance type of y (string or Gaussian family).

    Returns:
      The covariance type name of the sum.
    """
    kernel_x = covariance_kernels.KERNELS[_covariance_type(type_x)]
    return kernel_x.sum_type(covariance_kernels.KERNELS[_covariance_type(type_y)])


@functools.partial(jax.jit, static_argnames=("type_x", "type_y", "result_type"))
def _add(params_x, params_y, type_x, type_y, result_type):
    (n_x, n_features), n_y = params_x.means.shape, params_y.weights.shape[0]
    weights = (params_x.weights[:, None] * params_y.weights[None, :]).reshape(-1)
    means = (params_x.means[:, None, :] + params_y.means[None, :, :]).reshape(
        n_x * n_y, n_features
    )
    kernels = covariance_kernels.KERNELS
    result = kernels[result_type]
    # Both in the (more general) type of the sum, then Σ_k + Λ_l for each pair.
    cov_x = result.convert_from(kernels[type_x], params_x.covariances, n_x, n_features)
    cov_y = result.convert_from(kernels[type_y], params_y.covariances, n_y, n_features)
    return GaussianParams(weights, means, result.pairwise_sum(cov_x, cov_y))


def add(
    params_x: GaussianParams, type_x, params_y: GaussianParams, type_y
) -> tuple[GaussianParams, str]:
    r"""The Gaussian mixture of x + y for independent Gaussian mixtures x and y.

    With x ~ Σ_k π_k N(μ_k, Σ_k) and y ~ Σ_l ρ_l N(ν_l, Λ_l) independent,

    .. math::
        x + y \sim Σ_{k,l} π_k ρ_l \, N(μ_k + ν_l, Σ_k + Λ_l),

    a mixture of K_x·K_y components; component (k, l) is number ``k * K_y + l``.
    The covariance type of the result follows :func:`sum_covariance_type`.

    Args:
      params_x: parameters of x.
      type_x: covariance type of x (string or Gaussian family).
      params_y: parameters of y, with the same number of features.
      type_y: covariance type of y.

    Returns:
      ``(params, covariance_type)`` of x + y.

    Raises:
      ValueError: if the shapes are inconsistent or the feature counts differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxmix import mixture
      >>> from jaxmix.families import GaussianParams
      >>> x = GaussianParams(jnp.array([0.5, 0.5]), jnp.array([[0.0], [1.0]]),
      ...                    jnp.array([1.0, 1.0]))
      >>> total, kind = mixture.add(x, "spherical", x, "spherical")
      >>> kind, total.weights.shape
      ('spherical', (4,))
    """
    params_x, type_x, _, d_x = _prepare(params_x, type_x)
    params_y, type_y, _, d_y = _prepare(params_y, type_y)
    if d_x != d_y:
        raise ValueError(
            f"x and y must have the same number of features, got {d_x} and {d_y}"
        )
    result_type = sum_covariance_type(type_x, type_y)
    params = _add(params_x, params_y, type_x, type_y, result_type)
    return params, result_type


def _affine_covariance_type(covariance_type: str, matrix_ndim: int) -> str:
    if matrix_ndim == 0:
        return covariance_type
    kernel = covariance_kernels.KERNELS[covariance_type]
    return kernel.scaled_type if matrix_ndim == 1 else kernel.transformed_type


@functools.partial(jax.jit, static_argnames="covariance_type")
def _affine(params, matrix, offset, covariance_type):
    weights, means, covariances = params
    kernel = covariance_kernels.KERNELS[covariance_type]
    if matrix.ndim == 0:
        means = matrix * means
        covariances = jnp.square(matrix) * covariances
    elif matrix.ndim == 1:
        means = means * matrix
        covariances = kernel.scale_features(covariances, matrix)
    else:
        means = means @ matrix.T
        covariances = kernel.transform(covariances, matrix)
        covariances = 0.5 * (covariances + jnp.swapaxes(covariances, -1, -2))
    return GaussianParams(weights, means + offset, covariances)


def affine(
    params: GaussianParams, covariance_type, A: Array, b: Array | None = None
) -> tuple[GaussianParams, str]:
    r"""The Gaussian mixture of A x + b.

    Each component maps to N(A μ_k + b, A Σ_k Aᵀ); the weights are unchanged.
    ``A`` may be

    - a scalar a (scaling): the covariance type is kept (covariances times a²);
    - a vector a of length D (the diagonal of A): the type is kept, except that
      spherical becomes diag;
    - a matrix of shape (M, D): the result has M features and is tied if x is
      tied, full otherwise.

    If A has rank below M the component covariances are singular: moments are
    exact, but densities and :func:`sample` (which factorises them) are not
    defined.

    Args:
      params: parameters of x.
      covariance_type: covariance type of x (string or Gaussian family).
      A: scalar, (D,) vector or (M, D) matrix.
      b: offset, a scalar or an (M,) vector; zero if None.

    Returns:
      ``(params, covariance_type)`` of A x + b.

    Raises:
      ValueError: if ``A`` or ``b`` has a shape that does not fit.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxmix import mixture
      >>> from jaxmix.families import GaussianParams
      >>> x = GaussianParams(jnp.array([1.0]), jnp.array([[1.0, 2.0]]),
      ...                    jnp.array([[1.0, 1.0]]))
      >>> y, kind = mixture.affine(x, "diag", jnp.array([[1.0, 1.0]]), 3.0)
      >>> kind, y.means
      ('full', Array([[6.]], dtype=float32))
    """
    params, covariance_type, _, n_features = _prepare(params, covariance_type)
    dtype = params.means.dtype
    matrix = jnp.asarray(A, dtype)
    if matrix.ndim > 2:
        raise ValueError(
            f"A must be a scalar, a vector or a matrix, got {matrix.shape}"
        )
    if matrix.ndim == 1 and matrix.shape != (n_features,):
        raise ValueError(
            f"a vector A scales each feature and must have shape ({n_features},), "
            f"got {matrix.shape}"
        )
    if matrix.ndim == 2 and matrix.shape[1] != n_features:
        raise ValueError(
            f"A must have shape (M, {n_features}) for {n_features} features, "
            f"got {matrix.shape}"
        )
    n_out = matrix.shape[0] if matrix.ndim == 2 else n_features
    offset = jnp.zeros((), dtype) if b is None else jnp.asarray(b, dtype)
    if offset.ndim > 1 or (offset.ndim == 1 and offset.shape != (n_out,)):
        raise ValueError(
            f"b must be a scalar or have shape ({n_out},), got {offset.shape}"
        )
    result_type = _affine_covariance_type(covariance_type, matrix.ndim)
    return _affine(params, matrix, offset, covariance_type), result_type


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------


def _check_count(n_samples) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
        raise ValueError(f"n_samples must be an integer, got {n_samples!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    return int(n_samples)


@functools.partial(jax.jit, static_argnames=("covariance_type", "n_samples"))
def _sample(key, params, covariance_type, n_samples):
    weights, means, covariances = params
    label_key, noise_key = jax.random.split(key)
    labels = jax.random.categorical(label_key, jnp.log(weights), shape=(n_samples,))
    noise = jax.random.normal(noise_key, (n_samples, means.shape[1]), means.dtype)
    kernel = covariance_kernels.KERNELS[covariance_type]
    scaled = kernel.sample_noise(covariances, labels, noise)
    return means[labels] + scaled, labels


def sample(
    key: Array, params: GaussianParams, covariance_type, n_samples: int
) -> tuple[Array, Array]:
    r"""Samples of a Gaussian mixture by its generative process.

    Each sample draws a component :math:`k \sim \operatorname{Cat}(π)`, then
    :math:`x = μ_k + L_k z` with :math:`z \sim N(0, I)` and
    :math:`L_k L_kᵀ = Σ_k` (Cholesky). Labels are drawn independently, so the
    samples are in random order (unlike scikit-learn's ``sample``, which sorts
    them by component).

    Args:
      key: a JAX random key.
      params: the mixture's parameters (covariances positive definite).
      covariance_type: covariance type (string or Gaussian family).
      n_samples: number of samples (static: changing it recompiles).

    Returns:
      ``(X, labels)``: samples (N, D) in the dtype of the means, and the
      component of each sample (N,).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxmix import mixture
      >>> from jaxmix.families import GaussianParams
      >>> params = GaussianParams(jnp.array([0.3, 0.7]), jnp.zeros((2, 2)),
      ...                         jnp.array([1.0, 4.0]))
      >>> X, labels = mixture.sample(jax.random.key(0), params, "spherical", 5)
      >>> X.shape, labels.shape
      ((5, 2), (5,))
    """
    params, covariance_type, _, _ = _prepare(params, covariance_type)
    return _sample(key, params, covariance_type, _check_count(n_samples))


# ----------------------------------------------------------------------------
# Marginals and conditionals
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="covariance_type")
def _marginal(params, indices, covariance_type):
    weights, means, covariances = params
    kernel = covariance_kernels.KERNELS[covariance_type]
    covariances = kernel.select(covariances, indices, indices)
    return GaussianParams(weights, means[:, indices], covariances)


def marginal(params: GaussianParams, covariance_type, indices) -> GaussianParams:
    r"""Marginal mixture of the features ``indices``.

    Marginalising a Gaussian keeps the selected entries of its mean and the
    selected block of its covariance; the weights are unchanged. The covariance
    type is kept.

    Args:
      params: the mixture's parameters.
      covariance_type: covariance type (string or Gaussian family).
      indices: distinct feature indices to keep, in the order wanted.

    Returns:
      The params of the marginal mixture over ``len(indices)`` features.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxmix import mixture
      >>> from jaxmix.families import GaussianParams
      >>> params = GaussianParams(jnp.array([1.0]), jnp.array([[1.0, 2.0, 3.0]]),
      ...                         jnp.eye(3)[None])
      >>> mixture.marginal(params, "full", [2, 0]).means
      Array([[3., 1.]], dtype=float32)
    """
    params, covariance_type, _, n_features = _prepare(params, covariance_type)
    indices = _feature_indices(indices, n_features, "indices")
    if indices.size == 0:
        raise ValueError("indices must select at least one feature")
    return _marginal(params, jnp.asarray(indices), covariance_type)


def _condition_one(params, values, observed, unobserved, covariance_type):
    """Conditional mixture given one observation x_o (values, shape (O,))."""
    weights, means, covariances = params
    means_o, means_u = means[:, observed], means[:, unobserved]
    residual = values - means_o  # (K, O)
    n_observed = observed.shape[0]
    kernel = covariance_kernels.KERNELS[covariance_type]
    cond_means, cond_cov, maha, log_det = kernel.condition(
        means_u, covariances, residual, observed, unobserved
    )
    log_likelihood = -0.5 * (maha + n_observed * math.log(2 * math.pi)) - log_det
    cond_weights = jax.nn.softmax(jnp.log(weights) + log_likelihood)
    return GaussianParams(cond_weights, cond_means, cond_cov)


@functools.partial(jax.jit, static_argnames="covariance_type")
def _condition(params, values, observed, unobserved, covariance_type):
    one = functools.partial(
        _condition_one,
        params,
        observed=observed,
        unobserved=unobserved,
        covariance_type=covariance_type,
    )
    return jax.vmap(one)(values) if values.ndim == 2 else one(values)


def condition(
    params: GaussianParams, covariance_type, observed_indices, observed_values
) -> GaussianParams:
    r"""Conditional mixture of the other features given observed values.

    Split x into observed features o and unobserved features u. Given x_o,

    .. math::
        p(x_u | x_o) = Σ_k w_k \, N(x_u | μ_{k,u} + Σ_{k,uo} Σ_{k,oo}^{-1}
            (x_o − μ_{k,o}),\; Σ_{k,uu} − Σ_{k,uo} Σ_{k,oo}^{-1} Σ_{k,ou}),
        \qquad w_k ∝ π_k N(x_o | μ_{k,o}, Σ_{k,oo}),

    i.e. every component is conditioned by the Gaussian formula and the
    weights are re-weighted by Bayes' rule with the marginal likelihood of x_o.
    The inverse is never formed: both terms go through the Cholesky factor of
    Σ_oo. The covariance type is kept (for diag and spherical the features are
    independent within a component, so only the weights change).

    Args:
      params: the mixture's parameters.
      covariance_type: covariance type (string or Gaussian family).
      observed_indices: distinct indices of the observed features (concrete,
        not traced); at least one feature must stay unobserved.
      observed_values: the observed values in the order of
        ``observed_indices``: shape (O,), or (N, O) for N observations, which
        gives params with a leading axis N.

    Returns:
      The params of the conditional mixture over the unobserved features, in
      increasing feature order.

    Raises:
      ValueError: on inconsistent shapes or indices.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxmix import mixture
      >>> from jaxmix.families import GaussianParams
      >>> cov = jnp.array([[[1.0, 0.5], [0.5, 1.0]]])
      >>> params = GaussianParams(jnp.array([1.0]), jnp.zeros((1, 2)), cov)
      >>> conditional = mixture.condition(params, "full", [0], jnp.array([2.0]))
      >>> conditional.means, conditional.covariances
      (Array([[1.]], dtype=float32), Array([[[0.75]]], dtype=float32))
    """
    params, covariance_type, _, n_features = _prepare(params, covariance_type)
    observed = _feature_indices(observed_indices, n_features, "observed_indices")
    unobserved = np.setdiff1d(np.arange(n_features), observed)
    if unobserved.size == 0:
        raise ValueError("at least one feature must stay unobserved")
    values = jnp.asarray(observed_values, params.means.dtype)
    if values.ndim not in (1, 2) or values.shape[-1] != observed.size:
        raise ValueError(
            f"observed_values must have shape ({observed.size},) or "
            f"(N, {observed.size}) for {observed.size} observed features, "
            f"got {values.shape}"
        )
    if observed.size == 0:
        weights = params.weights / jnp.sum(params.weights)
        conditional = params._replace(weights=weights)
        if values.ndim == 2:
            batch = values.shape[0]
            conditional = jax.tree.map(
                lambda x: jnp.broadcast_to(x, (batch, *x.shape)), conditional
            )
        return conditional
    return _condition(
        params, values, jnp.asarray(observed), jnp.asarray(unobserved), covariance_type
    )


@functools.partial(jax.jit, static_argnames="covariance_type")
def _conditional_means(params, values, observed, covariance_type):
    r"""E[x | x_o] for rows sharing one pattern, with the pattern as a traced mask.

    ``observed`` is a (D,) boolean mask and ``values`` (N, D) holds the observed
    entries (anything finite elsewhere). Instead of gathering the observed block
    (whose size would fix the compiled shapes), the unobserved rows and columns
    of each covariance are replaced by those of the identity: the Cholesky
    factor of that matrix is the factor of Σ_oo on the observed block and the
    identity elsewhere (no fill-in across the blocks), so one compiled program
    serves every pattern. Returns (N, D); observed entries are not meaningful.
    """
    weights, means, covariances = params
    mask = observed.astype(means.dtype)  # (D,)
    n_observed = jnp.sum(mask)
    residual = (values[:, None, :] - means[None]) * mask  # (N, K, D)
    kernel = covariance_kernels.KERNELS[covariance_type]
    component_means, maha, log_det = kernel.condition_masked(
        means, covariances, residual, mask
    )
    log_likelihood = -0.5 * (maha + n_observed * math.log(2 * math.pi)) - log_det
    resp = jax.nn.softmax(jnp.log(weights) + log_likelihood, axis=-1)  # (N, K)
    return jnp.einsum("nk,nkd->nd", resp, component_means)


def impute(params: GaussianParams, covariance_type, X) -> np.ndarray:
    r"""Fill missing (NaN) features with their conditional mean under the mixture.

    For each row with observed features o and missing features u, the missing
    entries become :math:`E[x_u | x_o] = Σ_k w_k(x_o) \, E_k[x_u | x_o]` (see
    :func:`condition`); rows with every feature missing get the mixture mean,
    complete rows are returned unchanged. Host-side: rows are grouped by their
    pattern of missing features and each group is conditioned in one call. The
    pattern enters the compiled program as a mask, not as a shape, and groups
    are padded to a power of two rows, so few programs are compiled however
    many patterns there are.

    Args:
      params: the mixture's parameters.
      covariance_type: covariance type (string or Gaussian family).
      X: data (N, D) with NaN marking missing entries.

    Returns:
      A new numpy array (N, D) without NaN, in X's floating dtype.

    Raises:
      ValueError: if X is not (N, D) with D matching the params, or holds inf.

    Examples:
      >>> import numpy as np, jax.numpy as jnp
      >>> from jaxmix import mixture
      >>> from jaxmix.families import GaussianParams
      >>> cov = jnp.array([[[1.0, 0.5], [0.5, 1.0]]])
      >>> params = GaussianParams(jnp.array([1.0]), jnp.zeros((1, 2)), cov)
      >>> mixture.impute(params, "full", np.array([[2.0, np.nan]]))
      array([[2., 1.]])
    """
    params, covariance_type, _, n_features = _prepare(params, covariance_type)
    X = np.array(X, copy=True)
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(
            f"X must have shape (N, {n_features}) to match the params, got {X.shape}"
        )
    if np.isinf(X).any():
        raise ValueError("X contains infinity; only NaN marks a missing value")
    missing = np.isnan(X)
    patterns, group = np.unique(missing, axis=0, return_inverse=True)
    group = np.reshape(group, -1)
    values = np.where(missing, 0.0, X)
    for index, pattern in enumerate(patterns):
        if not pattern.any():
            continue
        rows = np.flatnonzero(group == index)
        # Pad to a power of two rows: few distinct shapes, few compilations.
        padded = np.resize(rows, 1 << (len(rows) - 1).bit_length())
        filled = _conditional_means(
            params,
            jnp.asarray(values[padded], params.means.dtype),
            jnp.asarray(~pattern),
            covariance_type,
        )
        X[np.ix_(rows, np.flatnonzero(pattern))] = np.asarray(filled)[
            : len(rows), pattern
        ]
    return X
