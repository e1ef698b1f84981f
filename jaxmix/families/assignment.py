"""Hard-assignment helpers: first maximum per row, farthest points, relocation.

Hard EM (K-means, K-medians) assigns every sample to one component. When a
component ends an E-step with no samples, scikit-learn's rule re-seeds it at the
samples farthest from their own centres; the statistics of the hard families
carry those candidates (:class:`Farthest`) so that the M-step can do it without
another pass over the data. "Farthest" is measured by the sample's cost under
its own component, minus its log joint density, which the E-step has already
computed: with equal weights and one shared variance (K-means) or scale
(K-medians) it increases with the distance to the centre. Candidates from two
blocks of samples are merged by keeping the costliest, which is how the engine
combines these statistics across chunks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def first_argmax(values: Array) -> Array:
    """Index of the first maximum of every row, shape (N,) int32.

    The same as ``jnp.argmax(values, axis=1)`` on finite rows, written as a max
    and a min-reduction over the column indices stored as floats: XLA's CPU
    backend runs these several times faster than the variadic (value, index)
    reduction behind ``argmax`` (and the float minimum faster than the integer
    one).
    """
    n_columns = values.shape[-1]
    dtype = values.dtype if jnp.issubdtype(values.dtype, jnp.floating) else None
    if dtype is None or n_columns > 2 ** jnp.finfo(dtype).nmant:
        dtype = jnp.int32  # indices not exact as floats: integer reduction
    best = jnp.max(values, axis=-1, keepdims=True)
    iota = jnp.arange(n_columns, dtype=dtype)
    first = jnp.min(jnp.where(values == best, iota, n_columns), axis=-1)
    return jnp.minimum(first, n_columns - 1).astype(jnp.int32)  # NaN rows: last


class Farthest(NamedTuple):
    """The M samples farthest from their centres (highest cost), farthest first.

    Unused slots have cost −inf. Samples of zero weight are never candidates.
    """

    costs: Array  # (M,)  −log joint density under the sample's own component
    points: Array  # (M, D)
    labels: Array  # (M,)  int32 component the sample was assigned to
    weights: Array  # (M,)  sample weight


def _take_largest(costs: Array, n_taken: int) -> Array:
    """Indices of the ``n_taken`` largest entries, largest first (first on ties).

    Ranked in float32: XLA's CPU top-k is fast in float32 but sorts in float64,
    and the order of two candidates closer than float32's resolution does not
    matter for re-seeding (scikit-learn does not order them at all).
    """
    return jax.lax.top_k(costs.astype(jnp.float32), n_taken)[1]


def farthest(
    X: Array, costs: Array, labels: Array, weights: Array, n_kept: int
) -> Farthest:
    """The ``n_kept`` samples of highest cost (zero-weight samples excluded).

    Args:
      X: samples, shape (N, D).
      costs: every sample's cost under its own component, shape (N,).
      labels: the component of every sample, shape (N,).
      weights: sample weights, shape (N,).
      n_kept: M, the number of candidates kept (static).
    """
    n_samples = X.shape[0]
    costs = jnp.where(weights > 0, costs, -jnp.inf)
    index = _take_largest(costs, min(n_kept, n_samples))
    kept = Farthest(
        costs[index], X[index], labels[index].astype(jnp.int32), weights[index]
    )
    pad = n_kept - kept.costs.shape[0]
    if pad:  # fewer samples than slots: the extra slots are unused
        kept = Farthest(
            jnp.pad(kept.costs, (0, pad), constant_values=-jnp.inf),
            jnp.pad(kept.points, ((0, pad), (0, 0))),
            jnp.pad(kept.labels, (0, pad)),
            jnp.pad(kept.weights, (0, pad)),
        )
    return kept


def empty_statistics(shapes):
    """Zero statistics whose ``farthest`` candidates are all unused (cost −inf)."""
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    far = zeros.farthest
    costs = jnp.full(far.costs.shape, -jnp.inf, far.costs.dtype)
    return zeros._replace(farthest=far._replace(costs=costs))


def merge_farthest(a: Farthest, b: Farthest) -> Farthest:
    """The farthest candidates of two blocks together (an associative merge).

    Both lists are sorted (farthest first), so each entry's place in the merged
    list is its own index plus the number of entries of the other list ahead of
    it (``a``'s first on ties): a scatter instead of a sort.
    """
    n_kept = a.costs.shape[0]
    ahead_of_a = jnp.sum(b.costs[None, :] > a.costs[:, None], axis=1)
    ahead_of_b = jnp.sum(a.costs[None, :] >= b.costs[:, None], axis=1)
    place = jnp.concatenate(
        [jnp.arange(n_kept) + ahead_of_a, jnp.arange(b.costs.shape[0]) + ahead_of_b]
    )
    both = jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)
    return jax.tree.map(
        lambda x: (
            jnp.zeros((n_kept, *x.shape[1:]), x.dtype).at[place].set(x, mode="drop")
        ),
        both,
    )


def assigned_centers(resp: Array, means: Array) -> tuple[Array, Array]:
    r"""Each sample's centre under its responsibilities, and its total weight.

    ``m_n = Σ_k r_nk μ_k / Σ_k r_nk``: for hard (one-hot) responsibilities, the
    centre the sample is assigned to. Rows of zero weight get the first centre.
    """
    weights = jnp.sum(resp, axis=1)
    safe = jnp.where(weights > 0, weights, 1.0)
    centers = (resp @ means) / safe[:, None]
    centers = jnp.where((weights > 0)[:, None], centers, means[0])
    return centers, weights


def relocation_slots(counts: Array, farthest: Array) -> tuple[Array, Array]:
    """Which candidate re-seeds each empty component.

    The i-th empty component (in index order) takes the i-th farthest sample,
    while candidates last; the others stay where they are until a later
    iteration has candidates for them.

    Args:
      counts: total weight per component, shape (K,).
      farthest: the candidates (M of them).

    Returns:
      ``(slot, relocated, used)``: the candidate each component would take, shape
      (K,) (meaningful where relocated); whether it is relocated, (K,) bool; and
      whether each candidate is used, (M,) bool.
    """
    n_kept = farthest.costs.shape[0]
    empty = counts <= 0
    slot = jnp.cumsum(empty) - 1
    available = farthest.costs > -jnp.inf
    n_available = jnp.sum(available)
    relocated = empty & (slot < n_available)
    n_relocated = jnp.sum(relocated)
    used = jnp.arange(n_kept) < n_relocated
    return jnp.clip(slot, 0, n_kept - 1), relocated, used
