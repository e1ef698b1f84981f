r"""Mixture of Laplace distributions with a fixed scale: K-medians as hard EM.

A component's density is ∏_d exp(−|x_d − μ_d| / b) / (2b), so the E-step compares
L1 distances and the location update that maximises Σ_n r_nk log p(x_n | μ_k) is
the weighted coordinate-wise median. Hard EM of this family with uniform weights
(``jaxmix.fit(..., hard=True)``) is K-medians.

A median is not a sum over samples, so these statistics cannot be added up over
chunks: the family sets ``additive_statistics = False`` and the engine keeps all
samples in one block. The exact weighted median is computed with static shapes
from the columns sorted once (``order``, which the family can carry so that the
sort happens outside the loop): each iteration only gathers the labels along
that order and finds, per component and feature, where the component's
cumulative weight crosses half its total — first per block of √N sorted
samples, then inside the one block where it crosses.

Only hard responsibilities are supported (soft EM of a Laplace mixture would
need a median weighted by every responsibility): with responsibilities that are
not one-hot the M-step returns NaN, which the engine reports as ``NONFINITE``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmix.families import assignment, charts
from jaxmix.families.base import Family, static
from jaxmix.families.mixing import guarded_counts, update_weights

Array = jax.Array


class LaplaceParams(NamedTuple):
    """Parameters of a Laplace mixture."""

    weights: Array  # (K,)
    means: Array  # (K, D)  locations μ_k (the medians)
    scales: Array  # (K,)  scale b_k, the same for every feature


class LaplaceStats(NamedTuple):
    """Statistics of hard responsibilities (not additive: medians)."""

    counts: Array  # (K,)  Σ_n r_nk
    medians: Array  # (K, D)  weighted coordinate-wise (lower) medians
    farthest: assignment.Farthest  # M samples farthest (in L1) from their centres
    hard: Array  # ()  bool: the responsibilities were one-hot


def sort_order(X: Array) -> Array:
    """Row indices that sort every column of X, shape (N, D) int32."""
    return jnp.argsort(X, axis=0).astype(jnp.int32)


def weighted_medians(
    X: Array, order: Array, labels: Array, weights: Array, n_components: int
) -> Array:
    r"""Weighted coordinate-wise lower median of every component, shape (K, D).

    For component k and feature d, the smallest x_nd (n in component k) whose
    cumulative weight over the component's samples ≤ x_nd reaches half the
    component's weight. With sorted columns this is where a running sum crosses
    a threshold, found in two levels with static shapes: the per-block totals
    (blocks of C ≈ √N sorted samples, one scatter-add) locate the block where
    it crosses, and a cumulative sum inside that block (K·D·C values) the
    sample. Empty components get an arbitrary value (the caller replaces it).

    Args:
      X: samples, shape (N, D).
      order: ``sort_order(X)``, shape (N, D).
      labels: component of every sample, shape (N,).
      weights: sample weights, shape (N,) (zero: ignored).
      n_components: K (static).
    """
    n_samples, n_features = X.shape
    block = max(1, math.isqrt(n_samples))
    n_blocks = -(-n_samples // block)
    pad = n_blocks * block - n_samples
    sorted_labels = jnp.pad(labels[order], ((0, pad), (0, 0)))  # (N', D)
    sorted_weights = jnp.pad(weights[order], ((0, pad), (0, 0)))
    features = jnp.arange(n_features)
    # Level 1: weight of every component in every block, per feature.
    bins = (
        features[None, :] * n_blocks + (jnp.arange(n_blocks * block) // block)[:, None]
    ) * n_components + sorted_labels
    totals = jax.ops.segment_sum(
        sorted_weights.ravel(), bins.ravel(), n_features * n_blocks * n_components
    ).reshape(n_features, n_blocks, n_components)
    running = jnp.cumsum(totals, axis=1)  # (D, B, K)
    half = 0.5 * running[:, -1, :]  # (D, K)
    crossing = jnp.minimum(jnp.sum(running < half[:, None, :], axis=1), n_blocks - 1)
    before = jnp.take_along_axis(
        jnp.pad(running, ((0, 0), (1, 0), (0, 0))), crossing[:, None, :], axis=1
    )[:, 0, :]  # weight of the component in the blocks before the crossing one
    # Level 2: inside the crossing block.
    rows = crossing[..., None] * block + jnp.arange(block)  # (D, K, C)
    in_block_labels = sorted_labels[rows, features[:, None, None]]
    in_block_weights = sorted_weights[rows, features[:, None, None]]
    mine = in_block_labels == jnp.arange(n_components)[None, :, None]
    mine = mine & (in_block_weights > 0)
    cumulative = jnp.cumsum(jnp.where(mine, in_block_weights, 0.0), axis=-1)
    position = jnp.sum(cumulative < (half - before)[..., None], axis=-1)
    # Round-off between the two levels must not step outside the component.
    last = jnp.max(jnp.where(mine, jnp.arange(block), 0), axis=-1)
    position = jnp.minimum(position, last)
    rank = crossing * block + position  # (D, K) index into the sorted column
    rank = jnp.minimum(rank, n_samples - 1)
    sample = order[rank, features[:, None]]  # (D, K)
    return X[sample, features[:, None]].T


class Laplace(Family):
    r"""Mixture of Laplace distributions with a fixed scale b (L1 cost).

    Args:
      scale: the fixed scale b > 0 (traced).
      uniform_weights: if True (K-medians) the weights stay at 1/K (static).
      order: optional ``sort_order(X)`` of the data the family will be fitted
        to (traced): the columns are then sorted once, outside the EM loop,
        instead of at every iteration.
      n_farthest: how many far samples are kept for re-seeding empty
        components in one iteration (static).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxmix
      >>> from jaxmix.families import laplace
      >>> X = jax.random.laplace(jax.random.key(0), (300, 2))
      >>> family = laplace.Laplace(order=laplace.sort_order(X))
      >>> start = laplace.LaplaceParams(jnp.full(3, 1 / 3), X[:3], jnp.ones(3))
      >>> result = jaxmix.fit(family, X, start, hard=True, tol=0.0, criterion="means")
      >>> result.params.means.shape
      (3, 2)
    """

    params_type = LaplaceParams
    location_field = "means"
    # Medians are not sums over samples: the engine keeps the data in one
    # block. Soft responsibilities would need a median weighted by every
    # responsibility, and the L1 cost is not differentiable at the median.
    additive_statistics = False
    soft_assignments = False
    smooth_objective = False
    # No centred fit: a median is one of the samples, exactly, in any
    # coordinates, and L1 distances are direct differences; moving the data to
    # its mean and back would only add round-off to the centres.

    scale: Any = 1.0
    uniform_weights: bool = static(True)
    order: Any = None
    n_farthest: int = static(8)

    def __post_init__(self):
        if isinstance(self.scale, (int, float)) and not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.n_farthest < 1:
            raise ValueError(f"n_farthest must be >= 1, got {self.n_farthest}")

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters: the locations (and the weights if they are learned)."""
        count = n_components * n_features
        if not self.uniform_weights:
            count += n_components - 1
        return count

    def charts(self):
        """Softmax weights if they are learned, and the locations (scale fixed)."""
        free = {} if self.uniform_weights else {"weights": charts.Simplex}
        return {**free, "means": charts.Location}

    def assignment_cost(self, X: Array, locations: Array) -> Array:
        """L1 distances (K-medians), (N, K)."""
        return jnp.sum(jnp.abs(X[:, None, :] - locations[None]), axis=-1)

    def params_at(self, locations: Array) -> LaplaceParams:
        """Locations with uniform weights and the fixed scale."""
        n_components = locations.shape[0]
        weights = jnp.full((n_components,), 1.0 / n_components, locations.dtype)
        return LaplaceParams(weights, locations, self._scales(locations))

    def log_component_density(self, params: LaplaceParams, X: Array) -> Array:
        r"""log p(x_n | μ_k, b_k) = −‖x_n − μ_k‖₁ / b_k − D log(2 b_k), shape (N, K)."""
        n_features = X.shape[-1]
        l1 = jnp.sum(jnp.abs(X[:, None, :] - params.means[None]), axis=-1)
        return -l1 / params.scales - n_features * jnp.log(2 * params.scales)

    def _scales(self, means: Array) -> Array:
        return jnp.full(means.shape[:1], self.scale, dtype=means.dtype)

    def reference(self, X: Array, resp: Array) -> LaplaceParams:
        """Parameters for these responsibilities when there are none yet."""
        counts = guarded_counts(jnp.sum(resp, axis=0))
        means = (resp.T @ X) / counts[:, None]
        return LaplaceParams(
            update_weights(counts, self.uniform_weights), means, self._scales(means)
        )

    def statistics(self, params: LaplaceParams, X: Array, resp: Array) -> LaplaceStats:
        """Counts, weighted medians and far samples of hard responsibilities.

        ``hard`` records whether every row of ``resp`` was one-hot (times its
        sample weight); the M-step returns NaN otherwise.
        """
        weights = jnp.sum(resp, axis=1)
        labels = assignment.first_argmax(resp)
        log_joint = jnp.take_along_axis(
            self.log_component_density(params, X) + jnp.log(params.weights),
            labels[:, None],
            axis=1,
        )[:, 0]
        stats = self.hard_statistics(params, X, labels, weights, log_joint)
        return stats._replace(hard=jnp.all(jnp.max(resp, axis=1) == weights))

    def hard_statistics(
        self,
        params: LaplaceParams,
        X: Array,
        labels: Array,
        weights: Array,
        log_joint: Array,
    ) -> LaplaceStats:
        """``statistics`` of one-hot responsibilities given as labels and weights.

        ``log_joint`` (N,) is each sample's log joint density under its
        component, from the E-step: its negative is the re-seeding cost.
        """
        n_components = params.means.shape[0]
        if self.order is not None and self.order.shape != X.shape:
            raise ValueError(
                f"order has shape {self.order.shape} but the data has shape "
                f"{X.shape}: build it with sort_order(X) for the data being fitted"
            )
        order = sort_order(X) if self.order is None else self.order
        counts = jax.ops.segment_sum(weights, labels, n_components)
        medians = weighted_medians(X, order, labels, weights, n_components)
        far = assignment.farthest(X, -log_joint, labels, weights, self.n_farthest)
        return LaplaceStats(counts, medians, far, jnp.asarray(True))

    def m_step(self, stats: LaplaceStats, params: LaplaceParams) -> LaplaceParams:
        r"""Locations μ_k = weighted coordinate-wise median of component k's samples.

        The median maximises Σ_n r_nk log p(x_n | μ_k) = −Σ_n r_nk ‖x_n − μ_k‖₁ / b
        + const. An empty component is re-seeded at the i-th farthest sample
        (in L1; the i-th empty component takes the i-th farthest). NaN if the
        responsibilities were not hard (see the module docstring).
        """
        far = stats.farthest
        slot, relocated, _ = assignment.relocation_slots(stats.counts, far)
        means = jnp.where((stats.counts > 0)[:, None], stats.medians, params.means)
        means = jnp.where(relocated[:, None], far.points[slot], means)
        means = jnp.where(stats.hard, means, jnp.nan)
        counts = jnp.where(relocated, far.weights[slot], stats.counts)
        weights = update_weights(guarded_counts(counts), self.uniform_weights)
        return LaplaceParams(weights, means, self._scales(means))

    def log_prior(self, params: LaplaceParams) -> Array:
        """Zero: maximum likelihood."""
        return jnp.zeros((), params.means.dtype)
