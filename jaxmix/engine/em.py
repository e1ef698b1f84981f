r"""The EM engine: E-step, M-step and the compiled fitting loop.

The engine works with any family of :class:`jaxmix.families.base.Family`: it
calls the family's methods (log densities, statistics, M-step, prior, the
optional translation, combination and hard statistics) and reads its
class-level facts (``centred_fit``, ``additive_statistics``,
``location_field``); it never asks which family it has. Because the
statistics are sums over samples (or combine associatively), the same loop
serves data in chunks and data sharded over devices: the chunks' statistics
are combined (and XLA adds them across devices).

Static arguments (changing them recompiles): the family's structure (for the
Gaussian family ``covariance_type`` and ``uniform_weights``), ``max_iter`` (it sizes
the trace), ``hard``, ``chunk_size`` and ``criterion``, and of course array shapes
and dtypes.
Traced (changing them does not recompile): the data, the start, ``tol``, sample
weights and the family's numbers (``reg_covar``, fixed variances, priors).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmix.engine import generalized
from jaxmix.families import charts, mixing
from jaxmix.families import fixed as fixing
from jaxmix.families.assignment import first_argmax
from jaxmix.families.missing import observed_mean, rows_by_missing_count

Array = jax.Array

RUNNING = 0
CONVERGED = 1
MAX_ITER = 2
NONFINITE = 3
CRITERIA = ("objective", "means")
STATUS_NAMES = {
    RUNNING: "running",
    CONVERGED: "converged",
    MAX_ITER: "max_iter",
    NONFINITE: "nonfinite",
}


class FitResult(NamedTuple):
    """Outcome of :func:`fit`."""

    params: Any  # the family's params after the last M-step
    log_likelihood: (
        Array  # ()  mean log-likelihood (+ log prior / N) at the last E-step
    )
    n_iter: Array  # ()  E/M iterations run
    converged: Array  # ()  bool: the objective changed by less than tol
    status: Array  # ()  CONVERGED, MAX_ITER or NONFINITE
    trace: Array  # (max_iter,)  objective per iteration, NaN past n_iter


class LoopState(NamedTuple):
    params: Any
    log_likelihood: Array  # ()
    n_iter: Array  # ()
    status: Array  # ()
    trace: Array  # (max_iter,)


def log_joint(family, params, X: Array) -> Array:
    """log π_k + log p(x_n | θ_k), shape (N, K).

    A component of weight exactly zero gets −inf, whatever its density (which
    may be undefined for a masked component), so it takes no responsibility.
    """
    return mixing.log_joint(family.log_component_density(params, X), params.weights)


def keep_zero_weights(new_params, params):
    r"""Keep components of weight exactly zero at zero: the component mask.

    EM never revives a component of weight zero (its responsibilities, hence
    its count, are exactly zero), but the guarded count ``N_k + 10ε`` would give
    it a weight of about 1e-15 after one M-step. Setting those weights back to
    zero and renormalising the others keeps a masked component out of the fit,
    so a K-component model whose last components have weight zero is fitted
    exactly like the smaller model (:func:`jaxmix.engine.batch.select_n_components`).
    A no-op when every weight is positive.
    """
    active = params.weights > 0
    weights = jnp.where(active, new_params.weights, 0)
    weights = jnp.where(jnp.all(active), new_params.weights, weights / jnp.sum(weights))
    return new_params._replace(weights=weights)


def e_step(family, params, X: Array, *, hard: bool = False) -> tuple[Array, Array]:
    r"""Responsibilities by Bayes' rule in log space.

    Args:
      family: the model family.
      params: the family's parameters.
      X: data, shape (N, D).
      hard: if True, responsibilities are one-hot on the most probable component
        (the first one on ties) and the per-sample objective is that component's
        log joint density.

    Returns:
      ``(resp, log_norm)``: responsibilities (N, K), rows summing to one, and the
      per-sample log-likelihood log p(x_n) (hard mode: max_k log joint).
    """
    if not hard:
        log_density = family.log_component_density(params, X)
        return mixing.posterior(log_density, params.weights)
    log_prob = log_joint(family, params, X)
    labels = first_argmax(log_prob)
    resp = jax.nn.one_hot(labels, log_prob.shape[1], dtype=log_prob.dtype)
    return resp, jnp.max(log_prob, axis=1)


def m_step(
    family,
    X: Array,
    resp: Array,
    sample_weight: Array | None = None,
    params=None,
    fixed=None,
):
    """M-step from responsibilities: closed form, or generalized for families without.

    A family without a closed-form M-step gets the generalized M-step of
    :mod:`jaxmix.engine.generalized`, started from ``params`` (or the family's
    reference point).

    Args:
      family: the model family.
      X: data, shape (N, D).
      resp: responsibilities, shape (N, K).
      sample_weight: optional non-negative weights, shape (N,).
      params: the current parameters (used as the centring reference); if None,
        the family's reference point for these responsibilities is used.
      fixed: optional full mask of fixed entries
        (:func:`jaxmix.families.fixed.fixed_mask`): the family's constrained
        M-step holds them at their values in ``params``, which is then required.

    Returns:
      The new params.
    """
    if fixed is not None:
        _check_fixed_fit(family, params)
    if sample_weight is not None:
        resp = resp * sample_weight[:, None]
    if params is None:
        params = family.reference(X, resp)
    if not family.closed_form_m_step:
        scale = charts.data_scale(X, sample_weight)
        return generalized.maximize(family, params, X, resp, scale)
    stats = family.statistics(params, X, resp)
    if fixed is not None:
        return family.constrained_m_step(stats, params, fixed)
    return family.m_step(stats, params)


def _check_fixed_fit(family, params) -> None:
    """ValueError unless fixed parameters can be held: a start and a closed form."""
    if params is None:
        raise ValueError("fixed parameters need params holding their values")
    if not family.closed_form_m_step:
        raise ValueError(
            f"{type(family).__name__} has no closed-form M-step; fixed parameters "
            "need one"
        )


def _pass(family, params, X, weights, hard):
    """One E-step over a block of samples and its weighted statistics."""
    if hard:
        # One-hot responsibilities given as labels: families that can avoid
        # the (N, K) one-hot matrix do so in hard_statistics.
        log_prob = log_joint(family, params, X)
        labels = first_argmax(log_prob)
        best = jnp.max(log_prob, axis=1)
        stats = family.hard_statistics(params, X, labels, weights, best)
        return stats, jnp.sum(weights * best)
    return family.posterior_statistics(params, X, weights)


def _responsibility_pass(family, params, data, weights, hard):
    """Sample-weighted responsibilities and the summed objective, block by block.

    For the generalized M-step, which needs the responsibilities themselves
    rather than statistics. ``data`` (N, D) with ``weights`` (N,), or (B, C, D)
    blocks with (B, C); ``resp`` comes back shaped like the data with K in
    place of D.
    """

    def block(X, w):
        resp, log_norm = e_step(family, params, X, hard=hard)
        return resp * w[:, None], jnp.sum(w * log_norm)

    if data.ndim == 2:
        return block(data, weights)
    resp, totals = jax.lax.map(lambda pair: block(*pair), (data, weights))
    return resp, jnp.sum(totals)


def default_chunk_size(n_components: int, n_features: int, dtype=None) -> int:
    """Rows per block so that a block's N·K·D intermediates stay in cache.

    About 2 MiB of N·K·D values (``dtype`` defaults to 4-byte floats). Measured
    on a 2-core CPU with K·D = 512, full covariance: float32 ran best with
    1024-row blocks (84 ms an iteration, 112 ms with 2048 rows), float64 with
    512-row blocks (170 ms, against 220-230 ms with 1024 rows and up to twice
    that with 4096).
    """
    itemsize = 4 if dtype is None else jnp.dtype(dtype).itemsize
    rows = (1 << 21) // max(1, n_components * n_features * itemsize)
    return int(min(max(rows, 256), 1 << 16))


def _chunked(X, weights, chunk_size, interleave=True):
    """(N, D) → (B, C, D) blocks, padded with zero-weight rows.

    The padding rows repeat the last sample, so they lie in the family's
    support: a log density there is finite, and a zero weight times it (or
    times its gradient) is zero, never NaN.

    Block b holds rows b, b + B, b + 2B, ...: with data sharded over devices along
    N, each block is spread over all devices, so every device works at every step.
    Without ``interleave``, block b holds rows bC, ..., bC + C − 1, and the
    padding comes first and repeats the first sample, so rows given in an
    order (e.g. increasing count of missing entries) keep it: padding that
    repeated the last, most incomplete row measured 1.7x slower per iteration
    with missing values (N = 100,000, D = 16, 20% missing).
    """
    n_samples = X.shape[0]
    n_blocks = -(-n_samples // chunk_size)
    pad = n_blocks * chunk_size - n_samples
    if not interleave:
        X = jnp.pad(X, ((pad, 0), (0, 0)), mode="edge")
        weights = jnp.pad(weights, (pad, 0))
        return X.reshape(n_blocks, chunk_size, -1), weights.reshape(n_blocks, -1)
    X = jnp.pad(X, ((0, pad), (0, 0)), mode="edge")
    weights = jnp.pad(weights, (0, pad))
    X = jnp.swapaxes(X.reshape(chunk_size, n_blocks, -1), 0, 1)
    weights = weights.reshape(chunk_size, n_blocks).T
    return X, weights


def _scan_blocks(family, params, X, weights, hard):
    """Statistics of (B, C, D) blocks, combined block after block by a scan."""

    def add(carry, block):
        stats, total = _pass(family, params, block[0], block[1], hard)
        return family.combine_statistics(carry[0], stats), carry[1] + total

    # The scan starts from the neutral statistics, so the block computation is
    # traced once: a peeled first block would duplicate it (twice the compile
    # time).
    shapes = jax.eval_shape(lambda: _pass(family, params, X[0], weights[0], hard))
    start = (family.empty_statistics(shapes[0]), jnp.zeros((), shapes[1].dtype))
    out, _ = jax.lax.scan(lambda c, b: (add(c, b), None), start, (X, weights))
    return out


def accumulate(family, params, X, weights, *, hard=False):
    """Statistics and summed log-likelihood over all samples, in blocks if needed.

    Returns ``(stats, log_likelihood_sum)``. ``X`` is either (N, D) or already
    blocked as (B, C, D) with weights (B, C).

    With several devices, each block's rows are split into one part per
    device (rows b + B·c of block b lie on the device holding row c's part of
    data sharded along samples), every part keeps its own running statistics
    through the scan, and the parts are combined once at the end. Data
    sharded across devices (or processes) then needs one cross-device sum
    per pass, not one per block: across processes, where each sum is a
    network round trip, that was measured 30x faster.
    """
    if X.ndim == 2:
        return _pass(family, params, X, weights, hard)
    n_blocks, block_rows, n_features = X.shape
    parts = jax.device_count()
    if parts == 1 or block_rows % parts:
        return _scan_blocks(family, params, X, weights, hard)
    X = X.reshape(n_blocks, parts, block_rows // parts, n_features).swapaxes(0, 1)
    weights = weights.reshape(n_blocks, parts, block_rows // parts).swapaxes(0, 1)
    stats, totals = jax.vmap(lambda x, w: _scan_blocks(family, params, x, w, hard))(
        X, weights
    )
    combined = jax.tree.map(lambda leaf: leaf[0], stats)
    for part in range(1, parts):
        combined = family.combine_statistics(
            combined, jax.tree.map(lambda leaf, i=part: leaf[i], stats)
        )
    return combined, jnp.sum(totals)


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return functools.reduce(jnp.logical_and, leaves, jnp.asarray(True))


def _blocks(family, X, weights, chunk_size, n_components):
    """The data as one block (N, D) or as (B, C, D) blocks, with their weights."""
    n_samples, n_features = X.shape
    if not family.additive_statistics:
        # Statistics that are neither sums nor combinable (e.g. medians) need
        # every sample in one block.
        if chunk_size is not None and chunk_size < n_samples:
            raise ValueError(
                f"{type(family).__name__} needs all samples in one block (its "
                "statistics are not sums over samples); got chunk_size="
                f"{chunk_size} < n_samples={n_samples}"
            )
        return X, weights
    if family.missing_values:
        # Rows in increasing count of missing entries, and blocks of
        # consecutive rows: the family then conditions most blocks on a small
        # missing block. The sums over rows, and so EM, are unchanged.
        X, weights = rows_by_missing_count(X, weights)
    if chunk_size is None:
        chunk_size = default_chunk_size(n_components, n_features, X.dtype)
    if n_samples > chunk_size:
        return _chunked(X, weights, chunk_size, interleave=not family.missing_values)
    return X, weights


def _status(finite, done, n_iter, max_iter) -> Array:
    """NONFINITE before CONVERGED before MAX_ITER; RUNNING otherwise."""
    return jnp.where(
        ~finite,
        NONFINITE,
        jnp.where(done, CONVERGED, jnp.where(n_iter >= max_iter, MAX_ITER, RUNNING)),
    ).astype(jnp.int32)


def _em_iteration(
    family,
    data,
    data_weights,
    total_weight,
    scale,
    tol,
    state,
    *,
    max_iter,
    hard,
    criterion,
    fixed=None,
) -> LoopState:
    """One E-step and M-step from the loop state, with the stopping decision."""
    if family.closed_form_m_step:
        stats, ll_sum = accumulate(family, state.params, data, data_weights, hard=hard)
        if fixed is None:
            new_params = family.m_step(stats, state.params)
        else:
            new_params = family.constrained_m_step(stats, state.params, fixed)
    else:
        resp, ll_sum = _responsibility_pass(
            family, state.params, data, data_weights, hard
        )
        new_params = generalized.maximize(family, state.params, data, resp, scale)
    return advance(
        family,
        state,
        new_params,
        ll_sum,
        total_weight,
        tol,
        max_iter=max_iter,
        criterion=criterion,
        fixed=fixed,
    )


def advance(
    family,
    state,
    new_params,
    ll_sum,
    total_weight,
    tol,
    *,
    max_iter,
    criterion,
    fixed=None,
) -> LoopState:
    """The loop state after an M-step: objective, stopping decision, trace.

    ``ll_sum`` is the E-step's summed (weighted) log-likelihood at
    ``state.params``; ``new_params`` the M-step's result. Shared by the
    compiled loop and the streamed fit, which computes the two over a pass of
    chunks. ``fixed`` (a full mask) holds its entries at ``state.params``'
    after the zero weights are kept.
    """
    objective = (ll_sum + family.log_prior(state.params)) / total_weight
    new_params = keep_zero_weights(new_params, state.params)
    if fixed is not None:
        # keep_zero_weights renormalises: put the fixed weights back exactly.
        new_params = fixing.hold(new_params, state.params, fixed)
    finite = jnp.isfinite(objective) & _all_finite(new_params)
    if criterion == "means":
        new_means = family.location(new_params)
        old_means = family.location(state.params)
        shift = jnp.sum(jnp.square(new_means - old_means))
        # Equal means also count: XLA may fuse the M-step's product into
        # the difference above (one FMA) and leave an ulp of round-off.
        done = (shift <= tol) | jnp.all(new_means == old_means)
    else:
        done = jnp.abs(objective - state.log_likelihood) < tol
    n_iter = state.n_iter + 1
    params = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old), new_params, state.params
    )
    return LoopState(
        params=params,
        log_likelihood=objective,
        n_iter=n_iter,
        status=_status(finite, done, n_iter, max_iter),
        trace=state.trace.at[state.n_iter].set(objective),
    )


def data_mean(family, X: Array, weights: Array) -> Array:
    """The (weighted) mean of X, (D,); with missing values, of the observed entries."""
    if family.missing_values:
        return observed_mean(X, weights)
    return (weights @ X) / jnp.sum(weights)


def run_em(
    family,
    X,
    params,
    tol,
    sample_weight,
    initial_log_likelihood,
    *,
    max_iter,
    hard=False,
    chunk_size=None,
    criterion="objective",
    fixed=None,
) -> FitResult:
    """:func:`fit` without the jit: the fitting loop that every driver composes.

    Arguments as in :func:`fit` (positional up to ``initial_log_likelihood``);
    call it inside a jitted program. ``fixed`` is None or a full mask
    (:func:`jaxmix.families.fixed.fixed_mask`).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if fixed is not None:
        _check_fixed_fit(family, params)
    start_params = params
    dtype = X.dtype
    n_samples, n_features = X.shape
    weights = (
        jnp.ones((n_samples,), dtype)
        if sample_weight is None
        else jnp.asarray(sample_weight, dtype)
    )
    total_weight = jnp.sum(weights)
    # Location families are fitted around the data's mean (and moved back at
    # the end): float32 means then keep their digits far from the origin.
    if family.centred_fit:
        origin = data_mean(family, X, weights)
        X = X - origin
        family, params = family.translate(params, -origin)
    n_components = params.weights.shape[0]
    data, data_weights = _blocks(family, X, weights, chunk_size, n_components)
    iteration = functools.partial(
        _em_iteration,
        family,
        data,
        data_weights,
        total_weight,
        # The generalized M-step's charts measure fields in the data's units.
        None if family.closed_form_m_step else charts.data_scale(X, weights),
        jnp.asarray(tol, dtype),
        max_iter=max_iter,
        hard=hard,
        criterion=criterion,
        fixed=fixed,
    )
    start = LoopState(
        params=params,
        log_likelihood=jnp.asarray(initial_log_likelihood, dtype),
        n_iter=jnp.zeros((), jnp.int32),
        status=jnp.asarray(RUNNING if max_iter > 0 else MAX_ITER, jnp.int32),
        # one spare slot so the body traces even when max_iter is 0
        trace=jnp.full((max_iter + 1,), jnp.nan, dtype),
    )
    final = jax.lax.while_loop(lambda state: state.status == RUNNING, iteration, start)
    params = final.params
    if family.centred_fit:
        _, params = family.translate(params, origin)
    if fixed is not None:
        # Moving the fixed locations to the centred frame and back rounds
        # them: they are the start's own values.
        params = fixing.hold(params, start_params, fixed)
    return FitResult(
        params=params,
        log_likelihood=final.log_likelihood,
        n_iter=final.n_iter,
        converged=final.status == CONVERGED,
        status=final.status,
        trace=final.trace[:max_iter],
    )


_fit_jit = jax.jit(
    run_em, static_argnames=("max_iter", "hard", "chunk_size", "criterion")
)


def fit(
    family,
    X: Array,
    params,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    sample_weight: Array | None = None,
    hard: bool = False,
    chunk_size: int | None = None,
    initial_log_likelihood: float = -jnp.inf,
    criterion: str = "objective",
    fixed=None,
) -> FitResult:
    r"""Fit a mixture by EM from ``params``, as one compiled ``lax.while_loop``.

    Each iteration computes the responsibilities at the current parameters, the
    objective there (mean log-likelihood, plus log prior / N for MAP families),
    and the closed-form M-step; it stops when the objective changes by less than
    ``tol`` (``CONVERGED``), after ``max_iter`` iterations (``MAX_ITER``), or when
    the objective or the new parameters are not finite (``NONFINITE``: the last
    finite parameters are kept and it is never reported as converged). As in
    scikit-learn, the reported objective is the one of the last E-step, i.e. of
    the parameters before the final M-step.

    Pure and jit/vmap compatible: ``jax.vmap`` over data sets, starts or sample
    weights batches fits (the loop then runs until the slowest member stops; a
    stopped member no longer changes). Data placed with a ``NamedSharding`` along
    samples is processed where it lies; the statistics are summed across devices.

    Args:
      family: the model family, e.g. ``jaxmix.families.Gaussian("full")``.
      X: data, shape (N, D). Float64 data is computed in float64 when x64 is
        enabled (``with jax.enable_x64(True):``).
      params: starting parameters, e.g. from :func:`jaxmix.initialize`.
      max_iter: maximum number of iterations (static: it sizes the trace).
      tol: convergence threshold on the change of the objective (traced).
      sample_weight: optional non-negative weights, shape (N,); zero weights mask
        samples (padding).
      hard: hard-assignment EM (static): responsibilities one-hot on the most
        probable component, objective the mean of the best log joint density.
      chunk_size: samples per block (static); default from K and D.
      initial_log_likelihood: objective to compare the first iteration against
        (``-inf``; a warm start passes the previous fit's value).
      criterion: what ``tol`` applies to (static). ``"objective"``: stop when
        the objective changes by less than ``tol``. ``"means"``: stop when the
        means move by at most ``tol`` in total, Σ_k ‖Δμ_k‖² ≤ tol (scikit-learn's
        K-means rule, with ``tol`` already scaled by the data's variance);
        ``tol=0`` then runs until the assignments stop changing.
      fixed: parameters held at their values in ``params`` (traced: a new
        mask of the same fields reuses the compiled fit). None (nothing
        fixed), field names (``{"means"}``), or a mapping from field names to
        a boolean, a (K,) mask of components or a mask of the field's shape
        (see :mod:`jaxmix.families.fixed`). Every M-step is the constrained
        maximiser over the free entries: the free weights share the mass
        the fixed ones leave, a Gaussian covariance is centred at its fixed
        mean. The fixed entries come back bit for bit. Families say what
        they can fix exactly (``family.check_fixed``); fixed parameters need
        a closed-form M-step.

    Returns:
      A :class:`FitResult`.

    Raises:
      ValueError: a mask of an unknown field or the wrong shape, or an entry
        the family cannot hold fixed exactly.

    Examples:
      >>> import jax, jaxmix
      >>> X = jax.random.normal(jax.random.key(0), (500, 2))
      >>> family = jaxmix.families.Gaussian("full")
      >>> params = jaxmix.initialize(family, jax.random.key(1), X, 3)
      >>> result = jaxmix.fit(family, X, params, max_iter=50)
      >>> result.params.means.shape
      (3, 2)
      >>> known = jaxmix.fit(family, X, params, fixed={"means": [True, False, False]})
      >>> bool((known.params.means[0] == params.means[0]).all())
      True
    """
    if fixed is not None:
        fixed = fixing.fixed_mask(family, params, fixed)
    return _fit_jit(
        family,
        X,
        params,
        tol,
        sample_weight,
        initial_log_likelihood,
        max_iter=max_iter,
        hard=hard,
        chunk_size=chunk_size,
        criterion=criterion,
        fixed=fixed,
    )
