"""Starting points for EM, in JAX: k-means, k-means++, random, random_from_data."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxmix.engine import em
from jaxmix.families.gaussian import Gaussian, GaussianParams
from jaxmix.families.missing import fill_missing

Array = jax.Array

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


def _squared_distances(X: Array, centers: Array) -> Array:
    # Direct differences (not ‖x‖² − 2x·c + ‖c‖²): exact on offset float32 data.
    return jnp.sum(jnp.square(X[:, None, :] - centers[None]), axis=-1)


def _uniform_index(key, n_samples: int, shape, dtype) -> Array:
    r"""Indices drawn uniformly from ``range(n_samples)``, without an (N,) array.

    The draw of ``jax.random.choice`` with equal probabilities, worked out in
    closed form: ``choice`` returns the first :math:`i` whose cumulative
    probability :math:`(i + 1) / N` reaches :math:`r = 1 - u` for
    :math:`u \sim U[0, 1)`, that is :math:`i = \lceil N r \rceil - 1`. The same
    key gives the same index, unless :math:`N r` falls within round-off of an
    integer (where ``choice``'s rounded cumulative sum decides otherwise). Inside a
    compiled program, equal probabilities would be an (N,) constant whose
    cumulative sum XLA folds at compile time: seconds of compilation at
    N = 200,000.
    """
    draws = n_samples * (1 - jax.random.uniform(key, shape, dtype))
    return jnp.clip(jnp.ceil(draws) - 1, 0, n_samples - 1).astype(int)


def _sample_index(key, probabilities: Array, shape=(), fallback=None) -> Array:
    """Indices drawn ∝ probabilities, or ∝ ``fallback`` when they are all zero.

    ``fallback`` defaults to uniform; pass the sample weights so that rows of
    zero weight (padding) are never drawn, even then. ``probabilities`` must
    depend on the data (or on traced weights): a constant would have its
    cumulative sum folded at compile time (use :func:`_uniform_index`).
    """
    total = jnp.sum(probabilities)
    if fallback is None:
        fallback = jnp.full_like(probabilities, 1.0 / probabilities.shape[0])
    else:
        fallback = fallback / jnp.sum(fallback)
    probabilities = jnp.where(
        total > 0, probabilities / jnp.where(total > 0, total, 1.0), fallback
    )
    return jax.random.choice(key, probabilities.shape[0], shape, p=probabilities)


def _trial_counts(n_clusters: int) -> list[int]:
    """``2 + ⌊ln k⌋`` for k = 1..K: k-means++'s candidates per center."""
    return [2 + int(math.log(k)) for k in range(1, n_clusters + 1)]


def kmeans_plusplus(
    key,
    X: Array,
    n_clusters: int,
    sample_weight: Array | None = None,
    n_active: Array | None = None,
) -> tuple[Array, Array]:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii, with local trials).

    Each new center is the best of ``2 + ⌊ln K⌋`` candidates drawn with
    probability proportional to (weighted) squared distance to the nearest center.

    ``n_active`` (traced; default K) seeds only the first ``n_active`` of the K
    centers, exactly as ``n_clusters=n_active`` would (the same draws: the
    candidates of a step are a prefix of a longer draw); the others repeat the
    first center's row. One program then serves every ``n_active`` ≤ K.

    Returns:
      ``(centers, indices)``: centers (K, D) and their row indices in X (K,).
    """
    n_samples = X.shape[0]
    if n_active is None:
        n_trials = 2 + int(math.log(n_clusters))
        max_trials = n_trials
    else:
        counts = _trial_counts(n_clusters)
        n_trials, max_trials = jnp.asarray(counts)[n_active - 1], counts[-1]
    key, first_key = jax.random.split(key)
    if sample_weight is None:
        first = _uniform_index(first_key, n_samples, (), X.dtype)
    else:
        first = _sample_index(first_key, sample_weight)
    indices = jnp.full((n_clusters,), first)
    closest = _squared_distances(X, X[first][None])[:, 0]

    def add_center(i, carry):
        indices, closest, key = carry
        key, sub = jax.random.split(key)
        if sample_weight is None:
            candidates = _sample_index(sub, closest, (max_trials,))
        else:
            candidates = _sample_index(
                sub, sample_weight * closest, (max_trials,), sample_weight
            )
        distances = jnp.minimum(closest[:, None], _squared_distances(X, X[candidates]))
        potential = (
            jnp.sum(distances, axis=0)
            if sample_weight is None
            else sample_weight @ distances
        )
        if n_active is not None:  # the trials beyond this K's count never win
            potential = jnp.where(jnp.arange(max_trials) < n_trials, potential, jnp.inf)
        best = jnp.argmin(potential)
        new = (
            indices.at[i].set(candidates[best].astype(indices.dtype)),
            distances[:, best],
        )
        if n_active is not None:  # the masked centers keep the first row
            new = jax.tree.map(
                lambda a, b: jnp.where(i < n_active, a, b), new, (indices, closest)
            )
        return (*new, key)

    indices, _, _ = jax.lax.fori_loop(
        1, n_clusters, add_center, (indices, closest, key)
    )
    return X[indices], indices


SEEDING_METHODS = ("k-means++", "random_from_data")


def seed_indices(
    key, X, sample_weight, n_components: int, method: str, n_active=None
) -> Array:
    """Indices of K samples to start from: k-means++ seeds or K distinct samples.

    ``"random_from_data"`` draws K distinct samples with probability
    proportional to their weight (uniformly without weights). ``n_active``:
    see :func:`kmeans_plusplus`; the distinct samples need nothing, as the
    first ``n_active`` of K draws are the draws of ``n_active`` (a prefix of
    a permutation, or of the Gumbel top-k order with weights).
    """
    if method == "k-means++":
        return kmeans_plusplus(key, X, n_components, sample_weight, n_active)[1]
    if method != "random_from_data":
        raise ValueError(f"method must be one of {SEEDING_METHODS}, got {method!r}")
    probabilities = None
    if sample_weight is not None:
        probabilities = sample_weight / jnp.sum(sample_weight)
    return jax.random.choice(
        key, X.shape[0], (n_components,), replace=False, p=probabilities
    )


def _lloyd_labels(X, centers, weights, max_iter=300, n_active=None):
    """Labels of Lloyd's K-means: hard EM of an isotropic, fixed-variance Gaussian.

    With ``n_active``, the centers from ``n_active`` on have weight zero: they
    take no sample (:func:`jaxmix.engine.em.keep_zero_weights`).
    """
    family = Gaussian("spherical", variance=1.0, uniform_weights=True)
    n_clusters = centers.shape[0]
    weights_0 = jnp.full((n_clusters,), 1.0 / n_clusters, X.dtype)
    if n_active is not None:
        weights_0 = component_mask(n_clusters, n_active, X.dtype) / n_active
    params = GaussianParams(weights_0, centers, jnp.ones((n_clusters,), X.dtype))
    # Labels stop changing ⇒ the objective stops changing exactly; the threshold
    # only absorbs round-off, relative to the data's spread.
    # Weighted spread, so zero-weight (padding) rows do not change it.
    mean = weights @ X / jnp.sum(weights)
    spread = weights @ jnp.square(X - mean) / jnp.sum(weights)
    # In float32 the objective can jitter at round-off level (near-tied labels
    # flipping back and forth) above 1e-8 of the spread: measured on 200 data
    # sets, 1% never stopped, and under vmap they kept the whole batch in
    # Lloyd's loop for max_iter iterations. Ten epsilons absorb it.
    relative = max(1e-8, 10 * float(jnp.finfo(X.dtype).eps))
    tol = relative * jnp.mean(spread) + jnp.finfo(X.dtype).tiny
    result = em.run_em(
        family,
        X,
        params,
        tol,
        weights,
        -jnp.inf,
        max_iter=max_iter,
        hard=True,
        chunk_size=None,
    )
    resp, _ = em.e_step(family, result.params, X, hard=True)
    return resp


def component_mask(n_components: int, n_active, dtype) -> Array:
    """1 for the first ``n_active`` (traced) of ``n_components`` components, else 0."""
    return (jnp.arange(n_components) < n_active).astype(dtype)


#: The methods that can start a fit whose last components are masked.
MASKABLE_METHODS = ("kmeans", "k-means++", "random_from_data")


def initial_params(
    family, key, X, sample_weight, *, n_components, method, n_active=None
):
    """:func:`initialize` without the jit or the checks (inside compiled programs).

    ``n_active`` (traced; not for ``"random"``): the start of
    ``n_components=n_active`` (the same draws, hence the same start, to
    round-off), padded to ``n_components`` with components of weight exactly
    zero. EM keeps those masked, so one compiled fit serves every K ≤
    ``n_components``.
    """
    if n_active is not None and method not in MASKABLE_METHODS:
        raise ValueError(
            f"masked components need a method in {MASKABLE_METHODS}, got {method!r}"
        )
    if family.missing_values:
        # Initialise on the data with each missing entry replaced by its
        # feature's observed mean; EM proper then handles the missing values.
        X = fill_missing(X, sample_weight)
        family = family.with_missing_values(False)
    n_samples = X.shape[0]
    if method == "kmeans":
        weights = (
            jnp.ones(n_samples, X.dtype) if sample_weight is None else sample_weight
        )
        centers, _ = kmeans_plusplus(key, X, n_components, sample_weight, n_active)
        resp = _lloyd_labels(X, centers, weights, n_active=n_active)
    elif method in SEEDING_METHODS:
        indices = seed_indices(key, X, sample_weight, n_components, method, n_active)
        resp = jnp.zeros((n_samples, n_components), X.dtype)
        resp = resp.at[indices, jnp.arange(n_components)].set(1.0)
    elif method == "random":
        resp = jax.random.uniform(key, (n_samples, n_components), X.dtype)
        resp = resp / jnp.sum(resp, axis=1, keepdims=True)
    else:
        raise ValueError(f"method must be one of {INIT_METHODS}, got {method!r}")
    if n_active is not None:  # the masked seeds' rows take no responsibility
        resp = resp * component_mask(n_components, n_active, resp.dtype)
    params = em.m_step(family, X, resp, sample_weight)
    if n_active is None:
        return params
    weights = params.weights * component_mask(n_components, n_active, X.dtype)
    return params._replace(weights=weights / jnp.sum(weights))


_initialize_jit = jax.jit(initial_params, static_argnames=("n_components", "method"))


def initialize(
    family,
    key,
    X: Array,
    n_components: int,
    method: str = "kmeans",
    sample_weight: Array | None = None,
):
    """Starting parameters for EM, computed in JAX (jit- and vmap-compatible).

    As in scikit-learn, each method produces responsibilities and the family's
    M-step turns them into parameters:

    - ``"kmeans"``: one-hot labels of Lloyd's K-means from a k-means++ start;
    - ``"k-means++"``: one-hot on the k-means++ seeds only;
    - ``"random"``: uniform random responsibilities, normalised per sample;
    - ``"random_from_data"``: one-hot on K distinct random samples.

    With missing values (a family with ``missing_values=True``), the method
    and the M-step run on the data with each missing entry replaced by its
    feature's observed (weighted) mean; EM proper then uses the observed
    entries only.

    Args:
      family: the model family.
      key: a JAX PRNG key.
      X: data, shape (N, D).
      n_components: K (static).
      method: one of the above (static).
      sample_weight: optional non-negative weights, shape (N,).

    Returns:
      The family's params.

    Examples:
      >>> import jax, jaxmix
      >>> X = jax.random.normal(jax.random.key(0), (100, 2))
      >>> family = jaxmix.families.Gaussian()
      >>> params = jaxmix.initialize(family, jax.random.key(1), X, 2)
      >>> params.covariances.shape
      (2, 2, 2)
    """
    if method not in INIT_METHODS:
        raise ValueError(f"method must be one of {INIT_METHODS}, got {method!r}")
    if not 1 <= n_components <= X.shape[0]:
        raise ValueError(
            f"n_components must be between 1 and n_samples={X.shape[0]}, "
            f"got {n_components}"
        )
    return _initialize_jit(
        family, key, X, sample_weight, n_components=n_components, method=method
    )
