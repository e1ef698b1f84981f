r"""Many fits at once: restarts, stacks of data sets and model selection.

Every driver here is one compiled program that ``jax.vmap`` batches over fits:

- :func:`fit_restarts` initialises and fits ``n_init`` restarts of one data set
  and keeps the best (highest final objective, never a non-finite one);
- :func:`fit_many` fits one mixture per data set of a stack (B, N, D), with
  ragged data sets padded by :func:`pad_datasets` and masked through zero sample
  weights, in slices of ``batch_size`` data sets so that 10^5–10^6 small fits
  run in bounded memory (and in cache);
- :func:`select_n_components` fits every number of components from 1 to K_max
  at once, as K_max-component models whose surplus components are masked out,
  and returns a BIC/AIC table and the best model.

Under ``vmap`` the engine's ``lax.while_loop`` runs until the slowest member of
the batch stops; a member that has stopped (converged, reached ``max_iter`` or
met a non-finite value) no longer changes, so each result is exactly what the
same fit run alone gives. The price is that every member costs as many
iterations as the slowest one; :func:`fit_many`'s slices limit that to the
slowest of each slice.

**Static and traced arguments.** A new compilation happens only when something
that changes the program changes:

- static: ``n_components`` and ``n_init`` (they are array shapes), ``method`` (a
  different initialisation program), ``max_iter`` (it sizes the per-iteration
  trace), ``hard`` and ``criterion`` (different loop bodies), the family's
  structure (e.g. the Gaussian ``covariance_type``, whether a prior is present
  at all), the shapes and dtypes of the data and of ``sample_weight`` (None or
  an array), and ``batch_size`` (the slice shape: once :func:`fit_many` slices
  a stack, the number of data sets B no longer matters, the last slice being
  padded to full size);
- traced: the data, the key, ``tol``, the sample weights and every number of the
  family (``reg_covar``, fixed variances, prior strengths). Refitting with new
  data of the same shape, a new ``tol``, a new ``reg_covar`` or new prior
  strengths reuses the compiled program.

The component mask used by :func:`select_n_components` is a weight of exactly
zero: the engine gives such a component −inf log weight (so no responsibility)
and keeps its weight at zero through the M-step
(:func:`jaxmix.engine.em.keep_zero_weights`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine import em, initialization, small
from jaxmix.families import fixed as fixing

Array = jax.Array


class RestartsResult(NamedTuple):
    """Outcome of :func:`fit_restarts`."""

    best: em.FitResult  # the restart with the highest final objective
    all: em.FitResult  # every restart, each field batched over R
    best_index: Array  # ()  index of ``best`` in ``all``


class BatchResult(NamedTuple):
    """Outcome of :func:`fit_many`: one fit per data set (no per-iteration trace)."""

    params: Any  # the family's params, each leaf batched over B
    log_likelihood: Array  # (B,)  final objective (mean log-likelihood per sample)
    n_iter: Array  # (B,)
    converged: Array  # (B,)  bool
    status: Array  # (B,)  CONVERGED, MAX_ITER or NONFINITE


# -- restarts ----------------------------------------------------------------------


def select_best(results: em.FitResult, score: Array | None = None):
    r"""The restart (leading axis) to keep: the one rule every driver uses.

    Among the restarts whose status is not ``NONFINITE`` and whose score is
    finite, the best score wins, and scores within 128 ulps of it (relative)
    count as ties, won by the lowest index:

    .. math::
        r^* = \min \{r : s_r \ge s_{\max} - c\,ε\,|s_{\max}|\},

    with ε the machine epsilon of the score's dtype and c = 128;
    restart 0 if no restart is finite. ``score`` defaults to the final
    objective ``results.log_likelihood`` (K-means passes minus the inertia of
    the final assignment).

    Why a tolerance: the same start fitted alone, or vmapped beside other
    starts, or in a group of another size, goes through differently compiled
    programs whose reductions round differently, so its final score can move
    by a few ulps. Restarts that reach the same optimum (common: a well
    separated mixture, or starts that differ by a permutation of components)
    then tie up to that rounding, and a plain ``argmax`` would pick whichever
    rounded highest: a different restart depending on how the restarts were
    batched. With the tolerance the choice depends only on the starts (unless
    a score lies within rounding of the tolerance's edge); scikit-learn's
    KMeans likewise keeps the first of restarts that end in the same
    clustering. It costs at most c·ε of relative objective, 1.5e-5 in float32
    and 2.8e-14 in float64: a few times the rounding of an objective summed
    over many samples. The tolerance is relative to the best score itself, so
    a best score of exactly 0 admits exact ties only.

    Returns:
      ``(best, index)``: the chosen member of ``results`` and its index.
    """
    score = results.log_likelihood if score is None else score
    finite = (results.status != em.NONFINITE) & jnp.isfinite(score)
    masked = jnp.where(finite, score, -jnp.inf)
    best_score = jnp.max(masked)
    slack = 128 * jnp.finfo(score.dtype).eps * jnp.abs(best_score)
    # With no finite score, best_score − slack is −inf and nothing is tied:
    # argmax of all-False is 0.
    tied = finite & (masked >= best_score - slack)
    index = jnp.argmax(tied)
    return jax.tree.map(lambda leaf: leaf[index], results), index


def fit_starts(
    family,
    X,
    starts,
    tol,
    sample_weight,
    initial_log_likelihood=-jnp.inf,
    *,
    max_iter,
    hard=False,
    criterion="objective",
    chunk_size=None,
    batch_size=None,
    fixed=None,
) -> em.FitResult:
    """EM from each of R starts (params batched over a leading axis), unjitted.

    The fitting driver of every restart, batch and sweep: ``jax.vmap`` of
    :func:`jaxmix.engine.em.run_em` over the starts, or, with ``batch_size``
    smaller than R, groups of ``batch_size`` vmapped starts one after another
    (``lax.map``). Call it inside a jitted program. ``fixed`` (None or a full
    mask, shared by every start) holds entries at each start's values.
    """

    def one(start):
        return em.run_em(
            family,
            X,
            start,
            tol,
            sample_weight,
            initial_log_likelihood,
            max_iter=max_iter,
            hard=hard,
            chunk_size=chunk_size,
            criterion=criterion,
            fixed=fixed,
        )

    return map_starts(one, starts, batch_size)


def map_starts(function, starts, batch_size=None):
    """``function`` over the leading axis of ``starts``, results stacked.

    ``jax.vmap``, or with ``batch_size`` smaller than R groups of
    ``batch_size`` vmapped starts one after another (``lax.map``). A single
    start is a plain call: the batched form of a while loop costs tracing
    time (vmap of one restart made a first ``GaussianMixture.fit`` 2x slower
    to trace) and, under the loop's batched predicate, run time.
    """
    n_starts = jax.tree.leaves(starts)[0].shape[0]
    if n_starts == 1:
        first = jax.tree.map(lambda leaf: leaf[0], starts)
        return jax.tree.map(lambda leaf: leaf[None], function(first))
    if batch_size is None or batch_size >= n_starts:
        return jax.vmap(function)(starts)
    return jax.lax.map(function, starts, batch_size=batch_size)


fit_starts_jit = jax.jit(
    fit_starts,
    static_argnames=("max_iter", "hard", "criterion", "chunk_size", "batch_size"),
)


def fit_and_select(
    family, X, starts, tol, sample_weight, initial_log_likelihood, *, max_iter
) -> RestartsResult:
    """:func:`fit_starts` from given starts, then :func:`select_best`."""
    results = fit_starts(
        family,
        X,
        starts,
        tol,
        sample_weight,
        initial_log_likelihood,
        max_iter=max_iter,
    )
    best, index = select_best(results)
    return RestartsResult(best, results, index)


fit_and_select_jit = jax.jit(fit_and_select, static_argnames=("max_iter",))


def _replace_fields(params, overrides):
    return params._replace(**overrides) if overrides else params


def initialize_and_fit(
    family,
    X,
    keys,
    tol,
    sample_weight,
    overrides,
    *,
    n_components,
    method,
    max_iter,
    hard=False,
    criterion="objective",
    batch_size=None,
    fixed=None,
    n_active=None,
) -> RestartsResult:
    """Initialise one start per key (fields in ``overrides`` replaced), fit, select.

    Unjitted; :data:`initialize_and_fit_jit` is the compiled program.
    ``fixed`` (None or a full mask) holds entries at their start values, which
    come from ``overrides``. ``n_active`` (traced): fit the first ``n_active``
    components only, the rest masked (see
    :func:`jaxmix.engine.initialization.initial_params`).
    """

    def start(key):
        params = initialization.initial_params(
            family,
            key,
            X,
            sample_weight,
            n_components=n_components,
            method=method,
            n_active=n_active,
        )
        return _replace_fields(params, overrides)

    starts = map_starts(start, keys, batch_size)
    results = fit_starts(
        family,
        X,
        starts,
        tol,
        sample_weight,
        max_iter=max_iter,
        hard=hard,
        criterion=criterion,
        batch_size=batch_size,
        fixed=fixed,
    )
    best, index = select_best(results)
    return RestartsResult(best, results, index)


_STATIC = ("n_components", "method", "max_iter", "hard", "criterion")
initialize_and_fit_jit = jax.jit(
    initialize_and_fit, static_argnames=(*_STATIC, "batch_size")
)


def _check_common(n_components, n_samples, method, max_iter, tol, n_init=1):
    if isinstance(n_components, bool) or not isinstance(n_components, int):
        raise ValueError(f"n_components must be an integer, got {n_components!r}")
    if not 1 <= n_components <= n_samples:
        raise ValueError(
            f"n_components must be between 1 and n_samples={n_samples}, "
            f"got {n_components}"
        )
    if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
        raise ValueError(f"n_init must be a positive integer, got {n_init!r}")
    if method not in initialization.INIT_METHODS:
        raise ValueError(
            f"method must be one of {initialization.INIT_METHODS}, got {method!r}"
        )
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    if isinstance(tol, (int, float)) and not tol >= 0:
        raise ValueError(f"tol must be non-negative, got {tol}")


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _check_weights(sample_weight, shape, n_components):
    """Shape, sign and enough positive weights per data set (concrete input only)."""
    if sample_weight is None:
        return
    if tuple(np.shape(sample_weight)) != tuple(shape):
        raise ValueError(
            f"sample_weight must have shape {tuple(shape)}, "
            f"got {tuple(np.shape(sample_weight))}"
        )
    if not _is_concrete(sample_weight):
        return
    weights = np.asarray(sample_weight)
    if not np.all(np.isfinite(weights)):
        raise ValueError("sample_weight contains NaN or infinity")
    if np.any(weights < 0):
        raise ValueError("sample_weight must be non-negative")
    positive = np.sum(weights > 0, axis=-1)
    if np.any(positive < n_components):
        raise ValueError(
            "every data set needs at least n_components samples of positive weight; "
            f"the smallest has {int(np.min(positive))} < {n_components}"
        )


def fit_restarts(
    family,
    X: Array,
    key: Array,
    n_components: int,
    n_init: int,
    *,
    method: str = "kmeans",
    max_iter: int = 100,
    tol: float = 1e-3,
    sample_weight: Array | None = None,
    hard: bool = False,
    criterion: str = "objective",
    batch_size: int | None = None,
    init=None,
    fixed=None,
) -> RestartsResult:
    r"""Initialise and fit ``n_init`` restarts in one compiled program; keep the best.

    Restart ``r`` starts from ``jaxmix.initialize(family, keys[r], X, n_components,
    method, sample_weight)`` with ``keys = jax.random.split(key, n_init)`` and is
    fitted by :func:`jaxmix.fit`. The best restart is the one with the highest
    final objective among those whose status is not ``NONFINITE`` (if all are
    non-finite, restart 0 is returned and its status says so). Under ``vmap`` the
    loop runs until the slowest restart stops; a stopped restart no longer
    changes, so ``all`` holds exactly the results of the restarts run one by one.

    Args:
      family: the model family, e.g. ``jaxmix.families.Gaussian("full")``.
      X: data, shape (N, D).
      key: a JAX PRNG key.
      n_components: K (static).
      n_init: number of restarts R (static).
      method: initialisation, one of ``jaxmix.engine.initialization.INIT_METHODS``
        (static).
      max_iter: maximum EM iterations per restart (static).
      tol: convergence threshold on the change of the objective (traced).
      sample_weight: optional non-negative weights, shape (N,) (traced).
      hard: hard-assignment EM (static), as in :func:`jaxmix.fit` (K-means,
        K-medians families).
      criterion: what ``tol`` applies to (static), as in :func:`jaxmix.fit`.
      batch_size: restarts vmapped together (static); groups of them run one
        after another in the same program (``lax.map``). None picks
        ``min(n_init, default_batch_size(N, K, D))``: all restarts at once for
        small data, one at a time when a single restart's (N, K, D) work no
        longer fits in cache, which measured faster on CPU (N=20,000, D=K=8:
        16 restarts in 5.1 s one by one against 8.8 s vmapped). Results do
        not depend on it.
      init: optional mapping (or params) ``{field: value}``: these fields
        replace the initialised ones in every restart's start.
      fixed: parameters held at their ``init`` values through every fit, as in
        :func:`jaxmix.fit` (field names, or a mapping from field names to
        masks); every field with a fixed entry must be given in ``init``.

    Returns:
      A :class:`RestartsResult` ``(best, all, best_index)``.

    Raises:
      ValueError: bad ``n_components``, ``n_init``, ``method``, ``max_iter``,
        ``tol`` or ``sample_weight``; ``init`` of unknown fields; ``fixed``
        entries without an ``init`` value, or that the family cannot fix.

    Examples:
      >>> import jax, jaxmix
      >>> from jaxmix import batch
      >>> X = jax.random.normal(jax.random.key(0), (300, 2))
      >>> family = jaxmix.families.Gaussian("full")
      >>> result = batch.fit_restarts(family, X, jax.random.key(1), 3, n_init=8)
      >>> result.all.log_likelihood.shape
      (8,)
    """
    if np.ndim(X) != 2:
        raise ValueError(f"X must have shape (N, D), got {np.shape(X)}")
    _check_common(n_components, np.shape(X)[0], method, max_iter, tol, n_init)
    _check_weights(sample_weight, np.shape(X)[:1], n_components)
    if batch_size is None:
        n_samples, n_features = np.shape(X)
        batch_size = min(
            n_init, default_batch_size(n_samples, n_components, n_features)
        )
    elif (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or (batch_size < 1)
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    keys = jax.random.split(key, n_init)
    overrides, mask = starts_and_mask(
        family, X, keys[0], sample_weight, init, fixed, n_components, method
    )
    return initialize_and_fit_jit(
        family,
        X,
        keys,
        tol,
        sample_weight,
        overrides,
        n_components=n_components,
        method=method,
        max_iter=max_iter,
        hard=hard,
        criterion=criterion,
        batch_size=batch_size,
        fixed=mask,
    )


def starts_and_mask(family, X, key, sample_weight, init, fixed, n_components, method):
    """``init`` as a dict of arrays (or None), and the full mask of ``fixed``.

    The mask (None if ``fixed`` is) is built against the shapes of the params
    ``method`` initialises; every field with a fixed entry needs an ``init``
    value. Only shapes of ``X`` and ``sample_weight`` are used.
    """
    if init is None:
        overrides = {}
    else:
        overrides = dict(init._asdict()) if hasattr(init, "_asdict") else dict(init)
    fields = family.params_type._fields
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"init names unknown field(s) {unknown}; {family.params_type.__name__} "
            f"has fields {list(fields)}"
        )
    overrides = {name: jnp.asarray(value) for name, value in overrides.items()}
    if fixed is None:
        return overrides or None, None
    template = jax.eval_shape(
        lambda x, w: initialization.initial_params(
            family, key, x, w, n_components=n_components, method=method
        ),
        jax.ShapeDtypeStruct(np.shape(X), X.dtype),
        None
        if sample_weight is None
        else jax.ShapeDtypeStruct(np.shape(sample_weight), sample_weight.dtype),
    )
    mask = fixing.fixed_mask(family, template, fixed)
    for name in fields:
        leaf = getattr(mask, name)
        held = not _is_concrete(leaf) or np.any(np.asarray(leaf))
        if held and name not in overrides:
            raise ValueError(
                f"fixed holds {name!r} but init gives no value for it: the fixed "
                "values come from init"
            )
    return overrides or None, mask


# -- stacks of data sets -----------------------------------------------------------


def _to_batch_result(result: em.FitResult) -> BatchResult:
    return BatchResult(
        result.params,
        result.log_likelihood,
        result.n_iter,
        result.converged,
        result.status,
    )


def _many_from_keys(
    family,
    Xs,
    keys,
    tol,
    sample_weight,
    overrides,
    *,
    n_components,
    n_init,
    method,
    max_iter,
    hard=False,
    criterion="objective",
) -> BatchResult:
    del n_init  # the shape of ``keys`` (B, R) carries it; static for the trace count

    def one(X, dataset_keys, weights):
        result = initialize_and_fit(
            family,
            X,
            dataset_keys,
            tol,
            weights,
            overrides,
            n_components=n_components,
            method=method,
            max_iter=max_iter,
            hard=hard,
            criterion=criterion,
        )
        return _to_batch_result(result.best)

    return jax.vmap(one)(Xs, keys, sample_weight)


_many_from_keys_jit = jax.jit(_many_from_keys, static_argnames=(*_STATIC, "n_init"))


def _many_from_params(
    family,
    Xs,
    params,
    tol,
    sample_weight,
    *,
    max_iter,
    hard=False,
    criterion="objective",
):
    def one(X, start, weights):
        return _to_batch_result(
            em.run_em(
                family,
                X,
                start,
                tol,
                weights,
                -jnp.inf,
                max_iter=max_iter,
                hard=hard,
                criterion=criterion,
            )
        )

    return jax.vmap(one)(Xs, params, sample_weight)


_many_from_params_jit = jax.jit(
    _many_from_params, static_argnames=("max_iter", "hard", "criterion")
)


def _take(tree, start, stop, size):
    """Rows start:stop of every leaf, padded to ``size`` rows by repeating row start."""
    missing = size - (stop - start)
    # NumPy leaves stay on the host until the slice is cut (bounded memory).
    xp = lambda leaf: jnp if isinstance(leaf, jax.Array) else np

    def one(leaf):
        part = leaf[start:stop]
        if missing:
            fill = xp(leaf).repeat(leaf[start : start + 1], missing, axis=0)
            part = xp(leaf).concatenate([part, fill])
        return jnp.asarray(part)

    return jax.tree.map(one, tree)


def default_batch_size(
    n_samples: int, n_components: int, n_features: int, n_init: int = 1
) -> int:
    """Data sets per slice so that a slice's N·K·D·R intermediates stay in cache.

    Measured on a 2-core CPU (N=500, D=2, K=3, full, float64): slices of 50–100
    data sets ran an EM iteration about three times faster per data set than
    slices of 1,000–2,000, whose (B, N, K, D) intermediates spill out of cache;
    2^18 elements per slice is about 90 such data sets.
    """
    per_set = max(1, n_samples * n_components * n_features * n_init)
    return max(1, (1 << 18) // per_set)


def _in_slices(run, inputs, n_sets, batch_size):
    """``run`` over slices of ``batch_size`` data sets; results concatenated.

    The last slice is padded to full size (one compiled shape for all slices),
    and at most two slices are in flight, so memory stays bounded by the slice.
    """
    parts, pending = [], None
    for start in range(0, n_sets, batch_size):
        stop = min(start + batch_size, n_sets)
        out = run(*_take(inputs, start, stop, batch_size))
        if pending is not None:
            jax.block_until_ready(pending)
        out = jax.tree.map(lambda leaf, n=stop - start: leaf[:n], out)
        parts.append(out)
        pending = out
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts)


# -- small problems ----------------------------------------------------------------
#
# Stacks of small Gaussian fits run on the elementwise path of
# jaxmix.engine.small, which replaces the EM iterations only: starts and
# restarts are made and chosen exactly as below.

PATHS = ("auto", "general", "small")


def _small_from_params(family, Xs, params, tol, sample_weight, *, max_iter, moments):
    result = small.run_small(
        family, Xs, params, tol, sample_weight, max_iter=max_iter, moments=moments
    )
    return _to_batch_result(result)


_small_from_params_jit = jax.jit(
    _small_from_params,
    static_argnames=("max_iter", "moments"),
    compiler_options=small.COMPILER_OPTIONS,
)


def _small_from_keys(
    family,
    Xs,
    keys,
    tol,
    sample_weight,
    overrides,
    *,
    n_components,
    method,
    max_iter,
    moments,
) -> BatchResult:
    """:func:`_many_from_keys` with the iterations on the small-problem path.

    ``keys`` (B, R): the R restarts of each data set are fitted as B·R data
    sets, then the best of each data set's restarts is kept.
    """
    n_sets, n_restarts = keys.shape[:2]

    def starts(X, dataset_keys, weights):
        def start(key):
            params = initialization.initial_params(
                family, key, X, weights, n_components=n_components, method=method
            )
            return _replace_fields(params, overrides)

        return jax.vmap(start)(dataset_keys)

    flatten = lambda leaf: leaf.reshape(n_sets * n_restarts, *leaf.shape[2:])
    repeat = lambda leaf: jnp.repeat(leaf, n_restarts, axis=0)
    params = jax.tree.map(flatten, jax.vmap(starts)(Xs, keys, sample_weight))
    results = small.run_small(
        family,
        repeat(Xs),
        params,
        tol,
        None if sample_weight is None else repeat(sample_weight),
        max_iter=max_iter,
        moments=moments,
    )
    results = jax.tree.map(
        lambda leaf: leaf.reshape(n_sets, n_restarts, *leaf.shape[1:]), results
    )
    return jax.vmap(lambda fits: _to_batch_result(select_best(fits)[0]))(results)


_small_from_keys_jit = jax.jit(
    _small_from_keys,
    static_argnames=("n_components", "method", "max_iter", "moments"),
    compiler_options=small.COMPILER_OPTIONS,
)


def _small_slices(
    family,
    inputs,
    *,
    width,
    n_components,
    n_init,
    method,
    max_iter,
    tol,
    overrides,
    moments,
    given,
) -> BatchResult:
    """The small-problem path over slices of ``width`` data sets (the last padded).

    ``inputs`` is ``(Xs, params, sample_weight)`` if ``given`` (starting params),
    else ``(Xs, keys, sample_weight)``.
    """
    if given:

        def run(Xs, params, sample_weight):
            return _small_from_params_jit(
                family,
                Xs,
                params,
                tol,
                sample_weight,
                max_iter=max_iter,
                moments=moments,
            )

    else:

        def run(Xs, keys, sample_weight):
            restart_keys = jax.vmap(lambda k: jax.random.split(k, n_init))(keys)
            return _small_from_keys_jit(
                family,
                Xs,
                restart_keys,
                tol,
                sample_weight,
                overrides,
                n_components=n_components,
                method=method,
                max_iter=max_iter,
                moments=moments,
            )

    return _in_slices(run, inputs, np.shape(inputs[0])[0], width)


def _fit_many_small(
    family,
    Xs,
    keys,
    *,
    n_components,
    sample_weight,
    n_init,
    batch_size,
    method,
    max_iter,
    tol,
    params,
    overrides,
) -> BatchResult:
    """:func:`fit_many_keyed` on the small-problem path (same arguments).

    Float64 fits take raw-moment statistics; the data sets where those may be
    less precise than centred ones (:func:`jaxmix.engine.small.imprecise`) are
    fitted again with centred statistics, in slices of the same shape.
    """
    if not isinstance(Xs, np.ndarray | jax.Array):
        Xs = np.asarray(Xs)
    n_sets, n_samples, _ = Xs.shape
    moments = small.uses_moments(Xs)
    if batch_size is None:
        batch_size = small.default_batch_size(n_samples, n_init)
    given = params is not None
    inputs = (Xs, params if given else keys, sample_weight)
    loop = dict(
        width=min(batch_size, n_sets),
        n_components=n_components,
        n_init=n_init,
        method=method,
        max_iter=max_iter,
        tol=tol,
        overrides=overrides,
        given=given,
    )
    result = _small_slices(family, inputs, moments=moments, **loop)
    if not moments:
        return result
    redo = np.flatnonzero(small.imprecise(family, small.spreads(Xs), result))
    if redo.size == 0:
        return result
    subset = jax.tree.map(lambda leaf: leaf[redo], inputs)
    again = _small_slices(family, subset, moments=False, **loop)
    return jax.tree.map(lambda leaf, part: leaf.at[redo].set(part), result, again)


def fit_many_keyed(
    family,
    Xs,
    keys,
    *,
    n_components,
    sample_weight=None,
    n_init=1,
    batch_size=None,
    method="kmeans",
    max_iter=100,
    tol=1e-3,
    params=None,
    overrides=None,
    hard=False,
    criterion="objective",
    path="auto",
) -> BatchResult:
    """:func:`fit_many` with per-data-set keys (B,) and optional field overrides.

    ``path`` picks the EM iterations: ``"auto"`` runs small Gaussian problems
    on :mod:`jaxmix.engine.small` (see :func:`jaxmix.engine.small.applies`) and
    everything else on the general engine; ``"general"`` and ``"small"``
    force one (``"small"`` raises ValueError where it does not apply).
    """
    loop = dict(max_iter=max_iter, hard=hard, criterion=criterion)
    n_sets, _, n_features = np.shape(Xs)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    applies = small.applies(
        family, n_components, n_features, hard=hard, criterion=criterion
    )
    if path == "small" and not applies:
        raise ValueError(
            "the small-problem path fits Gaussian families without priors or "
            f"fixed variance, soft EM with the objective criterion, at most "
            f"{small.MAX_FEATURES} features and {small.MAX_COMPONENTS} components"
        )
    if applies and path != "general":
        return _fit_many_small(
            family,
            Xs,
            keys,
            n_components=n_components,
            sample_weight=sample_weight,
            n_init=n_init,
            batch_size=batch_size,
            method=method,
            max_iter=max_iter,
            tol=tol,
            params=params,
            overrides=overrides,
        )
    if params is not None:

        def run(Xs, params, sample_weight):
            return _many_from_params_jit(family, Xs, params, tol, sample_weight, **loop)

        inputs = (Xs, params, sample_weight)
    else:

        def run(Xs, keys, sample_weight):
            restart_keys = jax.vmap(lambda k: jax.random.split(k, n_init))(keys)
            return _many_from_keys_jit(
                family,
                Xs,
                restart_keys,
                tol,
                sample_weight,
                overrides,
                n_components=n_components,
                n_init=n_init,
                method=method,
                **loop,
            )

        inputs = (Xs, keys, sample_weight)
    if batch_size is None:
        n_samples, n_features = np.shape(Xs)[1:]
        batch_size = default_batch_size(n_samples, n_components, n_features, n_init)
    if batch_size >= n_sets:
        return run(*inputs)
    return _in_slices(run, inputs, n_sets, batch_size)


def fit_many(
    family,
    Xs: Array,
    key: Array,
    n_components: int,
    *,
    sample_weight: Array | None = None,
    n_init: int = 1,
    batch_size: int | None = None,
    method: str = "kmeans",
    max_iter: int = 100,
    tol: float = 1e-3,
    params=None,
    hard: bool = False,
    criterion: str = "objective",
    _path: str = "auto",
) -> BatchResult:
    r"""Fit one mixture per data set of a stack, all at once.

    Data set ``b`` is fitted exactly as ``fit_restarts(family, Xs[b], keys[b],
    n_components, n_init, ...)`` with ``keys = jax.random.split(key, B)``, and its
    best restart is returned. Data sets of different lengths are padded to a
    common length with :func:`pad_datasets`, whose zero sample weights mask the
    padding out of the initialisation (zero-weight rows are never drawn) and of
    every EM statistic: from the same start, a padded data set gives the fit of
    the unpadded one (up to round-off in the order of summation).

    Small Gaussian problems (a Gaussian family without priors or fixed
    variance, soft EM, at most :data:`jaxmix.engine.small.MAX_FEATURES`
    features and :data:`jaxmix.engine.small.MAX_COMPONENTS` components) run
    their EM iterations on :mod:`jaxmix.engine.small`, elementwise with the
    data sets along the fast axis: the same fits to round-off, several times
    faster. Starts and restarts are made and chosen as for every family.

    Args:
      family: the model family.
      Xs: data sets, shape (B, N, D) (a NumPy array is transferred slice by
        slice).
      key: a JAX PRNG key.
      n_components: K (static).
      sample_weight: optional non-negative weights, shape (B, N); zeros mask
        padding. Each data set needs at least K rows of positive weight.
      n_init: restarts per data set (static); the best is kept.
      batch_size: data sets fitted at a time: a host loop over slices of one
        compiled shape (the last slice padded), so memory is bounded by the
        slice, not by B, and each slice stops when its own slowest fit stops.
        None picks :func:`default_batch_size` (cache-sized slices, faster than
        one program over a large stack; on the small-problem path
        :func:`jaxmix.engine.small.default_batch_size`); ``batch_size >= B``
        fits the whole stack in one program.
      method: initialisation method (static).
      max_iter: maximum EM iterations (static).
      tol: convergence threshold on the change of the objective (traced).
      params: optional starting params with a leading B axis; then no
        initialisation is run (``key`` is unused and ``n_init`` must be 1).
      hard: hard-assignment EM (static), as in :func:`jaxmix.fit`.
      criterion: what ``tol`` applies to (static), as in :func:`jaxmix.fit`.

    Returns:
      A :class:`BatchResult`: params, log_likelihood, n_iter, converged and status,
      each with a leading axis B.

    Raises:
      ValueError: bad shapes, options or weights.

    Examples:
      >>> import jax, jaxmix
      >>> from jaxmix import batch
      >>> Xs = jax.random.normal(jax.random.key(0), (100, 50, 2))
      >>> family = jaxmix.families.Gaussian("diag")
      >>> result = batch.fit_many(family, Xs, jax.random.key(1), 2)
      >>> result.params.means.shape
      (100, 2, 2)
    """
    if np.ndim(Xs) != 3:
        raise ValueError(f"Xs must have shape (B, N, D), got {np.shape(Xs)}")
    n_sets, n_samples, _ = np.shape(Xs)
    if n_sets == 0:
        raise ValueError("Xs holds no data sets")
    _check_common(n_components, n_samples, method, max_iter, tol, n_init)
    _check_weights(sample_weight, (n_sets, n_samples), n_components)
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if params is not None:
        if n_init != 1:
            raise ValueError("n_init must be 1 when starting params are given")
        leading = {np.shape(leaf)[0] for leaf in jax.tree.leaves(params)}
        if leading != {n_sets}:
            raise ValueError(
                f"params must have a leading axis of B={n_sets} data sets, got "
                f"leading sizes {sorted(leading)}"
            )
    keys = jax.random.split(key, n_sets)
    return fit_many_keyed(
        family,
        Xs,
        keys,
        n_components=n_components,
        sample_weight=sample_weight,
        n_init=n_init,
        batch_size=batch_size,
        method=method,
        max_iter=max_iter,
        tol=tol,
        params=params,
        hard=hard,
        criterion=criterion,
        path=_path,
    )


def pad_datasets(
    datasets: Sequence[Any], sample_weights: Sequence[Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stack data sets of different lengths into (B, N_max, D), masked by weights.

    Each data set is padded to the longest one with copies of its own first row
    (values inside the data's domain, whatever the family) of weight zero.

    Args:
      datasets: B arrays of shape (N_b, D), the same D for all.
      sample_weights: optional B arrays of shape (N_b,) (default: ones).

    Returns:
      ``(Xs, sample_weight)``: NumPy arrays of shapes (B, N_max, D) and
      (B, N_max); float32 if every data set is float32, float64 otherwise.

    Raises:
      ValueError: no data sets, an empty or non-2-D data set, differing numbers
        of features, or weights of the wrong length.

    Examples:
      >>> import numpy as np
      >>> from jaxmix import batch
      >>> Xs, w = batch.pad_datasets([np.zeros((3, 2)), np.ones((5, 2))])
      >>> Xs.shape, w.sum(axis=1)
      ((2, 5, 2), array([3., 5.]))
    """
    arrays = [np.asarray(x) for x in datasets]
    if not arrays:
        raise ValueError("pad_datasets needs at least one data set")
    for index, array in enumerate(arrays):
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(
                f"data set {index} must have shape (N, D) with N >= 1, "
                f"got {array.shape}"
            )
    n_features = {array.shape[1] for array in arrays}
    if len(n_features) != 1:
        raise ValueError(
            f"all data sets must have the same number of features, got {n_features}"
        )
    if sample_weights is not None and len(sample_weights) != len(arrays):
        raise ValueError(
            f"got {len(sample_weights)} sample weight arrays for {len(arrays)} "
            "data sets"
        )
    dtype = np.float32 if all(a.dtype == np.float32 for a in arrays) else np.float64
    n_max = max(array.shape[0] for array in arrays)
    Xs = np.empty((len(arrays), n_max, n_features.pop()), dtype)
    weights = np.zeros((len(arrays), n_max), dtype)
    for index, array in enumerate(arrays):
        n = array.shape[0]
        Xs[index, :n] = array
        Xs[index, n:] = array[0]
        if sample_weights is None:
            weights[index, :n] = 1
        else:
            given = np.asarray(sample_weights[index], dtype)
            if given.shape != (n,):
                raise ValueError(
                    f"sample weights of data set {index} must have shape ({n},), "
                    f"got {given.shape}"
                )
            weights[index, :n] = given
    return Xs, weights


# -- model selection ---------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("n_components", "method"))
def _initialize_restarts(family, keys, X, sample_weight, *, n_components, method):
    def one(key):
        return initialization.initial_params(
            family, key, X, sample_weight, n_components=n_components, method=method
        )

    return jax.vmap(one)(keys)


def pad_components(params, axes, n_components: int, axis: int = 0):
    """Params padded to ``n_components`` with masked components.

    Each leaf whose ``axes`` entry is True has its component axis at
    ``axis``; it is extended by repeats of component 0 (a valid value for
    any family), and the padded weights are exactly zero, which masks those
    components out of the fit and gives them a log joint density of −inf.
    NumPy leaves stay on the host (no compiled program), JAX arrays on their
    device.
    """

    def pad(leaf, has_axis, zero=False):
        xp = np if isinstance(leaf, np.ndarray) else jnp
        extra = n_components - leaf.shape[axis] if has_axis else 0
        if not extra:
            return leaf
        first = leaf[(slice(None),) * axis + (slice(1),)]
        fill = xp.repeat(first, extra, axis=axis)
        return xp.concatenate([leaf, xp.zeros_like(fill) if zero else fill], axis)

    padded = jax.tree.map(pad, params, axes)
    return padded._replace(weights=pad(params.weights, True, zero=True))


def _pad_to(params, template):
    """Batched starts padded (component axis 1) to the template's components."""
    axes = jax.tree.map(lambda leaf, like: leaf.shape != like.shape, params, template)
    return pad_components(params, axes, template.weights.shape[1], axis=1)


def _sweep(family, X, starts, tol, sample_weight, *, max_iter):
    """Fit (K_max, R) masked starts; the best restart per K and its final score."""

    def one_size(size_starts):
        results = fit_starts(
            family, X, size_starts, tol, sample_weight, max_iter=max_iter
        )
        best, index = select_best(results)
        log_norm = jax.nn.logsumexp(em.log_joint(family, best.params, X), axis=1)
        weights = jnp.ones_like(log_norm) if sample_weight is None else sample_weight
        total = jnp.sum(weights * log_norm)
        return best, index, total

    return jax.vmap(one_size)(starts)


_sweep_jit = jax.jit(_sweep, static_argnames=("max_iter",))


@dataclasses.dataclass(frozen=True)
class ModelSelection:
    """Outcome of :func:`select_n_components`: one row per (family, K).

    Arrays are indexed ``[t, k − 1]`` for family ``families[t]`` (labelled
    ``labels[t]``, e.g. its covariance type) and K = k. ``log_likelihood`` is
    the total (weighted) log-likelihood at the fitted parameters; a non-finite
    fit gets ``inf`` criteria.
    """

    families: tuple  # (T,) the families fitted
    labels: tuple  # (T,) their labels in the table (family.label)
    n_components: np.ndarray  # (K_max,)  1 … K_max
    log_likelihood: np.ndarray  # (T, K_max)
    n_parameters: np.ndarray  # (T, K_max)
    bic: np.ndarray  # (T, K_max)
    aic: np.ndarray  # (T, K_max)
    status: np.ndarray  # (T, K_max)
    fits: tuple  # (T,) FitResult batched over K, params padded to K_max (masked)
    best_restart: np.ndarray  # (T, K_max)  index of the best restart
    shapes: tuple  # (T, K_max) the K-component params' leaf shapes
    criterion: str  # "bic" or "aic"
    best_family: Any
    best_type_index: int  # index of best_family in families
    best_n_components: int
    best: em.FitResult  # the chosen fit, params with best_n_components components

    @property
    def covariance_types(self) -> tuple:
        """The row labels (for Gaussian families, their covariance types)."""
        return self.labels

    def model(self, label=None, n_components=None) -> em.FitResult:
        """The fit for one row, with its params cut to ``n_components`` components.

        ``label`` (e.g. a covariance type) None means the first family;
        ``n_components`` None the largest K.
        """
        t = self.labels.index(label) if label else 0
        k = self.n_components[-1] if n_components is None else n_components
        fit = jax.tree.map(lambda leaf: leaf[k - 1], self.fits[t])
        return fit._replace(params=_cut_components(fit.params, self.shapes[t][k - 1]))

    def table(self) -> str:
        """The table as text, the chosen row marked with ``*``."""
        width = max(10, *(len(str(label)) for label in self.labels))
        lines = [
            f"{'model':>{width}} {'K':>3} {'log-lik':>12} {'params':>6} "
            f"{'BIC':>12} {'AIC':>12}"
        ]
        for t, name in enumerate(self.labels):
            for j, k in enumerate(self.n_components):
                chosen = t == self.best_type_index and k == self.best_n_components
                mark = "*" if chosen else " "
                lines.append(
                    f"{name:>{width}} {k:>3} {self.log_likelihood[t, j]:>12.3f} "
                    f"{self.n_parameters[t, j]:>6} {self.bic[t, j]:>12.3f} "
                    f"{self.aic[t, j]:>12.3f} {mark}"
                )
        return "\n".join(lines)


def _cut_components(params, shapes):
    """Drop masked components: cut each leaf to the K-component model's shape.

    ``shapes`` holds the K-component leaves' shapes (``jax.ShapeDtypeStruct``);
    a leaf of unchanged shape (a tied covariance) has no component axis.
    """
    return jax.tree.map(
        lambda leaf, like: leaf[: like.shape[0]] if leaf.shape != like.shape else leaf,
        params,
        shapes,
    )


def _sweep_family(
    family, X, size_keys, sample_weight, *, n_init, method, tol, max_iter
):
    """One family's sweep: starts per K, padded to K_max, fitted in one program.

    Returns ``(best, best_restart, log_likelihood, shapes)``: the best fit per
    K (batched over K), its restart index, its total log-likelihood, and the
    K-component params' leaf shapes.
    """
    sizes = range(1, len(size_keys) + 1)
    per_size = [
        _initialize_restarts(
            family,
            jax.random.split(size_keys[k - 1], n_init),
            X,
            sample_weight,
            n_components=k,
            method=method,
        )
        for k in sizes
    ]
    shapes = tuple(
        jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), p)
        for p in per_size
    )
    starts = [_pad_to(p, per_size[-1]) for p in per_size]
    starts = jax.tree.map(lambda *leaves: jnp.stack(leaves), *starts)
    best, index, total = _sweep_jit(
        family, X, starts, tol, sample_weight, max_iter=max_iter
    )
    return best, np.asarray(index), np.asarray(total, dtype=np.float64), shapes


def _sweep_families(given, covariance_types) -> tuple:
    """The families of the sweep's rows: one or several, or covariance variants."""
    families = tuple(given) if isinstance(given, Sequence) else (given,)
    if not families:
        raise ValueError("select_n_components needs at least one family")
    if covariance_types is None:
        return families
    if len(families) != 1:
        raise ValueError("covariance_types goes with a single family")
    if isinstance(covariance_types, str) or not covariance_types:
        raise ValueError(
            "covariance_types must be a non-empty sequence of names, got "
            f"{covariance_types!r}"
        )
    try:
        return tuple(
            dataclasses.replace(families[0], covariance_type=name)
            for name in covariance_types
        )
    except TypeError:
        raise ValueError(
            f"covariance_types given, but {type(families[0]).__name__} has no "
            "covariance_type"
        ) from None


def select_n_components(
    family,
    X: Array,
    key: Array,
    max_components: int,
    *,
    covariance_types: Sequence[str] | None = None,
    n_init: int = 1,
    method: str = "kmeans",
    max_iter: int = 100,
    tol: float = 1e-3,
    sample_weight: Array | None = None,
    criterion: str = "bic",
) -> ModelSelection:
    r"""Fit every K from 1 to ``max_components`` at once; a BIC/AIC table and the best.

    For each K the starts are ``jaxmix.initialize(family, k_r, X, K, method)`` for
    the restart keys ``k_r = jax.random.split(jax.random.split(key,
    max_components)[K − 1], n_init)`` (the same as :func:`fit_restarts` with key
    ``jax.random.split(key, max_components)[K − 1]``). They are padded to
    ``max_components`` components of weight exactly zero, and all
    ``max_components × n_init`` fits run as one vmapped program: a masked
    component has −inf log weight, takes no responsibility and keeps weight
    zero, so each fit equals the ordinary K-component fit from that start. The
    starts are computed per K (one small compiled initialisation per K); the
    fits are one program per family.

    The criteria use the (weighted) log-likelihood at the fitted parameters and
    ``family.n_parameters(K, D)``: BIC = −2 log L + p log N, AIC = −2 log L + 2p,
    with N the total sample weight. Priors are not supported in the masked sweep
    (a masked component would still enter the prior density): use a maximum-
    likelihood family.

    Args:
      family: the model family, or a sequence of families compared side by side
        (one row block each, labelled by ``family.label``).
      X: data, shape (N, D).
      key: a JAX PRNG key (the same key for every family, so the families are
        compared from comparable starts).
      max_components: the largest K.
      covariance_types: shorthand for the variants of one family with these
        ``covariance_type`` values (Gaussian families).
      n_init: restarts per K; the best (highest final objective) is kept.
      method: initialisation method.
      max_iter: maximum EM iterations.
      tol: convergence threshold.
      sample_weight: optional non-negative weights, shape (N,).
      criterion: ``"bic"`` or ``"aic"``: which criterion picks the best model.

    Returns:
      A :class:`ModelSelection`.

    Raises:
      ValueError: bad options, or ``covariance_types`` for a family without them.

    Examples:
      >>> import jax, jaxmix
      >>> from jaxmix import batch
      >>> X = jax.random.normal(jax.random.key(0), (200, 2))
      >>> family = jaxmix.families.Gaussian("full")
      >>> key = jax.random.key(1)
      >>> sweep = batch.select_n_components(family, X, key, 2, method="k-means++")
      >>> sweep.bic.shape
      (1, 2)
    """
    if np.ndim(X) != 2:
        raise ValueError(f"X must have shape (N, D), got {np.shape(X)}")
    n_samples, n_features = np.shape(X)
    _check_common(max_components, n_samples, method, max_iter, tol, n_init)
    _check_weights(sample_weight, (n_samples,), max_components)
    if criterion not in ("bic", "aic"):
        raise ValueError(f"criterion must be 'bic' or 'aic', got {criterion!r}")
    families = _sweep_families(family, covariance_types)
    size_keys = jax.random.split(key, max_components)
    sizes = np.arange(1, max_components + 1)
    rows = [
        _sweep_family(
            fam,
            X,
            size_keys,
            sample_weight,
            n_init=n_init,
            method=method,
            tol=tol,
            max_iter=max_iter,
        )
        for fam in families
    ]
    fits, best_restart, log_lik, shapes = (list(column) for column in zip(*rows))
    log_lik = np.stack(log_lik)
    n_params = np.asarray(
        [[fam.n_parameters(int(k), n_features) for k in sizes] for fam in families]
    )
    status = np.stack([np.asarray(fit.status) for fit in fits])
    total_weight = (
        float(n_samples)
        if sample_weight is None
        else float(np.sum(np.asarray(sample_weight)))
    )
    finite = np.isfinite(log_lik) & (status != em.NONFINITE)
    bic = np.where(finite, -2 * log_lik + n_params * math.log(total_weight), np.inf)
    aic = np.where(finite, -2 * log_lik + 2 * n_params, np.inf)
    scores = bic if criterion == "bic" else aic
    t, j = np.unravel_index(int(np.argmin(scores)), scores.shape)
    chosen = jax.tree.map(lambda leaf: leaf[j], fits[t])
    chosen = chosen._replace(params=_cut_components(chosen.params, shapes[t][j]))
    return ModelSelection(
        families=families,
        labels=tuple(fam.label for fam in families),
        n_components=sizes,
        log_likelihood=log_lik,
        n_parameters=n_params,
        bic=bic,
        aic=aic,
        status=status,
        fits=tuple(fits),
        best_restart=np.stack(best_restart),
        shapes=tuple(shapes),
        criterion=criterion,
        best_family=families[t],
        best_type_index=int(t),
        best_n_components=int(sizes[j]),
        best=chosen,
    )
