r"""Gaussian mixture with a fixed isotropic covariance σ²I: K-means as hard EM.

With every covariance fixed at σ²I (and, for K-means, uniform weights), the
E-step compares squared distances ‖x_n − μ_k‖² only, and the M-step is the mean
of each component's samples. Hard EM of this family (``jaxmix.fit(...,
hard=True)``) is Lloyd's K-means; soft EM tends to it as σ² → 0.

The distances are matrix products, ‖x‖² − 2x·μ + ‖μ‖², taken around the centres'
mean so that float32 keeps its digits on data far from the origin. Empty
components are re-seeded at the samples farthest from their centres
(scikit-learn's rule), so no mean is ever NaN.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmix.families import assignment, charts
from jaxmix.families.base import Family, static
from jaxmix.families.gaussian import GaussianParams
from jaxmix.families.mixing import guarded_counts, update_weights

Array = jax.Array


class IsotropicStats(NamedTuple):
    """Statistics of (weighted) responsibilities; ``farthest`` for empty components."""

    counts: Array  # (K,)  Σ_n r_nk
    sums: Array  # (K, D)  Σ_n r_nk x_n
    farthest: assignment.Farthest  # M samples farthest from their centres


def squared_distances(X: Array, means: Array) -> Array:
    r"""‖x_n − μ_k‖² by matrix products, shape (N, K).

    ``‖x − o‖² − 2 (x − o)·(μ − o) + ‖μ − o‖²`` with ``o`` the centres' mean: the
    cross term is one (N, D) × (D, K) product, and working around ``o`` keeps
    the three terms small when the data sit far from zero. Clipped at zero.
    """
    origin = jnp.mean(means, axis=0)
    X = X - origin
    means = means - origin
    sq = (
        jnp.sum(jnp.square(X), axis=1)[:, None]
        - 2.0 * (X @ means.T)
        + jnp.sum(jnp.square(means), axis=1)[None, :]
    )
    return jnp.maximum(sq, 0.0)


class IsotropicGaussian(Family):
    r"""Gaussian mixture whose components all have the fixed covariance σ²I.

    Params are :class:`~jaxmix.families.GaussianParams` with spherical
    covariances (K,), so they are interchangeable with
    ``Gaussian("spherical", variance=σ²)``; this family computes the same model
    with distances by matrix products and re-seeds empty components.

    Args:
      variance: the fixed variance σ² (traced: changing it does not recompile).
      uniform_weights: if True (K-means) the weights stay at 1/K (static).
      n_farthest: how many far samples the statistics keep for re-seeding empty
        components in one iteration (static); more empty components than this
        are re-seeded in the following iterations.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxmix
      >>> from jaxmix.families import GaussianParams
      >>> from jaxmix.families.isotropic import IsotropicGaussian
      >>> X = jax.random.normal(jax.random.key(0), (300, 2))
      >>> start = GaussianParams(jnp.full(3, 1 / 3), X[:3], jnp.ones(3))
      >>> lloyd = jaxmix.fit(IsotropicGaussian(), X, start, hard=True, tol=0.0,
      ...                    criterion="means")
      >>> lloyd.params.means.shape
      (3, 2)
    """

    params_type = GaussianParams
    location_field = "means"
    centred_fit = True

    variance: Any = 1.0
    uniform_weights: bool = static(True)
    n_farthest: int = static(8)

    def __post_init__(self):
        if isinstance(self.variance, (int, float)) and not self.variance > 0:
            raise ValueError(f"variance must be positive, got {self.variance}")
        if self.n_farthest < 1:
            raise ValueError(f"n_farthest must be >= 1, got {self.n_farthest}")

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters: the means (and the weights if they are learned)."""
        count = n_components * n_features
        if not self.uniform_weights:
            count += n_components - 1
        return count

    def charts(self):
        """Softmax weights if they are learned, and the means (variance fixed)."""
        free = {} if self.uniform_weights else {"weights": charts.Simplex}
        return {**free, "means": charts.Location}

    def assignment_cost(self, X: Array, locations: Array) -> Array:
        """Squared Euclidean distances, by matrix products (K-means), (N, K)."""
        return squared_distances(X, locations)

    def params_at(self, locations: Array) -> GaussianParams:
        """Centres ``locations`` with uniform weights and the fixed variance."""
        n_components = locations.shape[0]
        weights = jnp.full((n_components,), 1.0 / n_components, locations.dtype)
        return GaussianParams(weights, locations, self._covariances(locations))

    def log_component_density(self, params: GaussianParams, X: Array) -> Array:
        r"""log N(x_n | μ_k, σ_k² I) = −‖x_n − μ_k‖² / (2σ_k²) − (D/2) log(2πσ_k²).

        Expanded around the centres' mean o as one matrix product plus a
        per-component and a per-sample term:
        (x − o)·(μ_k − o)/σ_k² − ‖μ_k − o‖²/(2σ_k²) − (D/2) log(2πσ_k²)
        − ‖x − o‖²/(2σ_k²).
        """
        n_features = X.shape[-1]
        variances = params.covariances
        origin = jnp.mean(params.means, axis=0)
        X = X - origin
        means = params.means - origin
        precision = 1.0 / variances
        cross = X @ (means * precision[:, None]).T  # (N, K)
        per_component = -0.5 * (
            jnp.sum(jnp.square(means), axis=1) * precision
            + n_features * jnp.log(2 * math.pi * variances)
        )
        per_sample = jnp.sum(jnp.square(X), axis=1)
        return cross + per_component - 0.5 * per_sample[:, None] * precision

    def reference(self, X: Array, resp: Array) -> GaussianParams:
        """Parameters for these responsibilities when there are none yet."""
        counts = guarded_counts(jnp.sum(resp, axis=0))
        means = (resp.T @ X) / counts[:, None]
        return GaussianParams(
            update_weights(counts, self.uniform_weights),
            means,
            self._covariances(means),
        )

    def _covariances(self, means: Array) -> Array:
        return jnp.full(means.shape[:1], self.variance, dtype=means.dtype)

    def statistics(
        self, params: GaussianParams, X: Array, resp: Array
    ) -> IsotropicStats:
        """Counts, weighted sums, and the samples farthest from their centres.

        A sample's centre is Σ_k r_nk μ_k / Σ_k r_nk (for hard responsibilities
        the one it is assigned to), its component the most responsible one, and
        its cost minus its log joint density there.
        """
        counts = jnp.sum(resp, axis=0)
        sums = resp.T @ X
        centers, weights = assignment.assigned_centers(resp, params.means)
        labels = assignment.first_argmax(resp)
        variances = params.covariances[labels]
        costs = 0.5 * (
            jnp.sum(jnp.square(X - centers), axis=1) / variances
            + X.shape[-1] * jnp.log(2 * math.pi * variances)
        ) - jnp.log(params.weights[labels])
        far = assignment.farthest(X, costs, labels, weights, self.n_farthest)
        return IsotropicStats(counts, sums, far)

    def hard_statistics(
        self,
        params: GaussianParams,
        X: Array,
        labels: Array,
        weights: Array,
        log_joint: Array,
    ) -> IsotropicStats:
        """``statistics`` of one-hot responsibilities, by segment sums over labels.

        ``log_joint`` (N,) is each sample's log joint density under its
        component, from the E-step: its negative is the re-seeding cost.
        """
        n_components = params.means.shape[0]
        counts = jax.ops.segment_sum(weights, labels, n_components)
        sums = jax.ops.segment_sum(X * weights[:, None], labels, n_components)
        far = assignment.farthest(X, -log_joint, labels, weights, self.n_farthest)
        return IsotropicStats(counts, sums, far)

    def empty_statistics(self, shapes) -> IsotropicStats:
        """No samples: zero counts and sums, and no re-seeding candidates."""
        return assignment.empty_statistics(shapes)

    def combine_statistics(
        self, a: IsotropicStats, b: IsotropicStats
    ) -> IsotropicStats:
        """Statistics of two blocks of samples together."""
        return IsotropicStats(
            a.counts + b.counts,
            a.sums + b.sums,
            assignment.merge_farthest(a.farthest, b.farthest),
        )

    def m_step(self, stats: IsotropicStats, params: GaussianParams) -> GaussianParams:
        r"""Means of the components' samples, μ_k = Σ_n r_nk x_n / N_k.

        A component with N_k = 0 is re-seeded at the i-th farthest sample (the
        i-th empty component takes the i-th farthest), and that sample leaves
        the component it was in, as in scikit-learn's Lloyd iteration. A
        component left without weight keeps its mean.
        """
        far = stats.farthest
        n_components = stats.counts.shape[0]
        slot, relocated, used = assignment.relocation_slots(stats.counts, far)
        moved = jnp.where(used, far.weights, 0.0)
        counts = stats.counts - jax.ops.segment_sum(moved, far.labels, n_components)
        sums = stats.sums - jax.ops.segment_sum(
            moved[:, None] * far.points, far.labels, n_components
        )
        # Relative threshold: removing a component's only samples leaves round-off.
        keep = counts > 16 * jnp.finfo(counts.dtype).eps * stats.counts
        safe = jnp.where(keep, counts, 1.0)
        means = jnp.where(keep[:, None], sums / safe[:, None], params.means)
        means = jnp.where(relocated[:, None], far.points[slot], means)
        counts = jnp.where(relocated, far.weights[slot], jnp.where(keep, counts, 0.0))
        weights = update_weights(guarded_counts(counts), self.uniform_weights)
        return GaussianParams(weights, means, self._covariances(means))

    def log_prior(self, params: GaussianParams) -> Array:
        """Zero: maximum likelihood."""
        return jnp.zeros((), params.means.dtype)
