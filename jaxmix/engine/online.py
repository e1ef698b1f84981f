r"""Online (stepwise) EM: one step per mini-batch, for data seen once or a few times.

Exact EM needs a pass over all the data for every iteration. Stepwise EM
(Cappé & Moulines 2009, "On-line expectation-maximization algorithm for latent
data models") takes one step per mini-batch instead: it keeps a running
average :math:`s` of the sufficient statistics and moves it towards the
statistics of each new batch,

.. math::
    s_t = s_{t−1} + γ_t \big(\bar s(B_t; θ_{t−1}) − s_{t−1}\big), \qquad
    θ_t = \bar θ(n_t s_t), \qquad γ_t = (t + t_0)^{−α},

where :math:`\bar s(B; θ)` is the batch's statistics at the current parameters
*per unit of sample weight* (the batch's statistics divided by its total
weight W), so :math:`s` is on the scale of one sample's expected statistics
whatever the batch size, and :math:`\bar θ` is the family's M-step. With
α ∈ (0.5, 1] the steps satisfy Σγ_t = ∞ and Σγ_t² < ∞, and the recursion is
a stochastic approximation of the EM fixed point on the population: θ_t
approaches a stationary point of the expected log-likelihood as batches
accumulate. It is **approximate**: after one pass over N samples θ_t is close
to, but not equal to, the EM fit of those N samples, and the gap depends on
the schedule and the batch size. For the exact fit over data in chunks use
:func:`jaxmix.fit` (in memory) or the streamed exact EM.

**The start.** Before any step there are no statistics. The running average
starts at zero and is divided by the weight the recursion has given to
batches so far, :math:`Z_t = 1 − ∏_{i ≤ t} (1 − γ_i)` (the bias correction
of Adam), which is the same as taking the effective step
:math:`γ_t / Z_t`. The first step therefore always *replaces* the statistics
by the first batch's (:math:`γ_1 / Z_1 = 1`), so θ_1 is one EM iteration
from the start on that batch. With t₀ = 0, γ_1 = 1 and :math:`Z_t = 1`: the
recursion is exactly Cappé and Moulines'. With t₀ > 0 the early steps are
close to a plain average of the first batches' statistics (γ_t changes
slowly while t ≪ t₀) instead of leaving the zero start in the average.

**Sample size and priors.** The M-step is taken from :math:`n_t s_t`, the
running statistics scaled to :math:`n_t` samples: by default the total sample
weight of the batches seen so far. For maximum likelihood this changes nothing
(the M-step is invariant to the scale of the statistics); for a MAP family
(Dirichlet, Beta, normal-inverse-Wishart priors, which enter through the
family's M-step) it makes the prior weigh as against the :math:`n_t` samples
the statistics stand for, as in batch MAP-EM on those samples, and not against
one sample. When the same data is passed several times, pass
``sample_size=N`` (the data set's total weight) so that the prior is not
diluted by counting samples twice; :func:`fit_online` does this after its
first epoch.

**The reference point.** A family may take its statistics around the current
params (the Gaussian family centres its moments at the current means), and
statistics taken around different points cannot be averaged. The running
statistics are therefore all taken around one fixed *reference*, the params
the online fit started from, while each E-step uses the current params; the
M-step is given the same reference. In float32 the centred moments keep their
digits as long as the means stay near the start (a start from a k-means
initialisation on the first batch does).

**Which families.** Every floating leaf of the statistics must be a weighted
sum over samples, so that a weighted average of statistics is the statistics
of a weighted average: families whose statistics are not sums
(``additive_statistics=False``, K-medians), whose neutral statistics are not
zero (the hard-clustering families that carry re-seeding candidates; use
``Gaussian("spherical", variance=σ², uniform_weights=True)`` with
``hard=True`` for online K-means), or that have no closed-form M-step
(``closed_form_m_step=False``, fitted by generalized EM) raise ``ValueError``,
as do families whose statistics depend on the current E-step in more than the
responsibilities (``online_statistics=False``: Student-t, factor analysers).

**Compilation.** :func:`online_step` is compiled once per batch shape and
dtype; the schedule (t₀, α), the sample size, the sample weights and the
family's numbers are traced, ``hard`` is static. :func:`fit_online` pads a
short batch to the common batch size with zero-weight rows that repeat a real
row, so a data set whose size is not a multiple of the batch size compiles no
second program.
"""

from __future__ import annotations

import functools
import numbers
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine import em
from jaxmix.families.assignment import first_argmax

Array = jax.Array


class OnlineState(NamedTuple):
    """State of an online EM fit: a pytree of arrays (it can be vmapped)."""

    params: Any  # the family's params θ_t after the last step
    stats: Any  # s_t: running statistics per unit sample weight, around `reference`
    reference: Any  # the params every statistic is taken around (the start)
    n_steps: Array  # ()  int32, t: the steps taken
    coverage: Array  # ()  Z_t = 1 − ∏(1 − γ_i), the weight given to batches so far
    n_seen: Array  # ()  total sample weight of the batches stepped on
    log_likelihood: Array  # ()  objective of the last batch, at θ before its step
    finite: Array  # ()  bool: the last batch's step was finite (else not taken)


class OnlineResult(NamedTuple):
    """Outcome of :func:`fit_online`."""

    params: Any  # the params after the last step
    state: OnlineState  # the final state, to continue with more batches
    trace: Array  # (n_steps,)  each batch's objective at θ before its step


def check_family(family) -> None:
    """Raise ``ValueError`` if the family's statistics cannot be averaged online."""
    name = type(family).__name__
    if not family.closed_form_m_step:
        raise ValueError(
            f"{name} has no closed-form M-step (it is fitted by generalized EM), "
            "so it has no running sufficient statistics for online EM; fit it "
            "with jaxmix.fit"
        )
    if not family.additive_statistics:
        raise ValueError(
            f"{name}'s statistics are not sums over samples (e.g. medians), so "
            "they cannot be averaged over batches by online EM"
        )
    if not family.online_statistics:
        raise ValueError(
            f"{name}'s statistics hold quantities of the current E-step beyond "
            "the responsibilities, so statistics of different batches cannot be "
            "averaged around one reference point; fit it with jaxmix.fit or "
            "jaxmix.fit_stream (exact EM over data in chunks)"
        )


def _concrete_number(value, message: str) -> float | None:
    """``value`` as a float, None if traced; ``ValueError(message)`` if no number."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
        raise ValueError(f"{message}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{message}, got {value!r}") from None


def check_schedule(t0, alpha) -> None:
    """Raise ``ValueError`` unless α ∈ (0.5, 1] and t₀ ≥ 0 is finite.

    Traced values (inside ``jit`` or ``vmap``) cannot be checked and are not.
    """
    message = (
        "alpha must be a number in (0.5, 1] (the steps (t + t0)^-alpha must sum "
        "to infinity while their squares do not)"
    )
    value = _concrete_number(alpha, message)
    if value is not None and not 0.5 < value <= 1.0:
        raise ValueError(f"{message}, got {alpha!r}")
    message = "t0 must be a finite number >= 0"
    value = _concrete_number(t0, message)
    if value is not None and not 0.0 <= value < np.inf:
        raise ValueError(f"{message}, got {t0!r}")


def _statistic_shapes(family, params, n_features: int, dtype):
    n_components = params.weights.shape[0]
    return jax.eval_shape(
        lambda: family.statistics(
            params,
            jnp.zeros((1, n_features), dtype),
            jnp.zeros((1, n_components), dtype),
        )
    )


def init_online(family, params, n_features: int) -> OnlineState:
    """The state of an online fit starting from ``params``, before any batch.

    The running statistics are the family's neutral statistics (zeros) and
    the reference point is ``params``; the first :func:`online_step` replaces
    the statistics by its batch's.

    Args:
      family: the model family.
      params: the starting params, e.g. from :func:`jaxmix.initialize`.
      n_features: D, the number of features of the data.

    Returns:
      An :class:`OnlineState` with ``n_steps == 0``.

    Raises:
      ValueError: a family that online EM cannot fit (see the module's
        docstring).
    """
    check_family(family)
    dtype = params.weights.dtype
    shapes = _statistic_shapes(family, params, n_features, dtype)
    # Inside a jit the neutral statistics are still constants: evaluate them
    # now to check that they are zeros (plain sums over samples).
    with jax.ensure_compile_time_eval():
        empty = family.empty_statistics(shapes)
        neutral_is_zero = all(
            bool(np.all(np.asarray(leaf) == 0)) for leaf in jax.tree.leaves(empty)
        )
    if not neutral_is_zero:
        raise ValueError(
            f"{type(family).__name__}'s statistics are not plain sums over samples "
            "(their neutral element is not zero, e.g. re-seeding candidates), so "
            "online EM cannot average them; for online K-means use "
            'Gaussian("spherical", variance=1.0, uniform_weights=True) with '
            "hard=True"
        )
    zero = jnp.zeros((), dtype)
    return OnlineState(
        params=params,
        stats=empty,
        reference=params,
        n_steps=jnp.zeros((), jnp.int32),
        coverage=zero,
        n_seen=zero,
        log_likelihood=jnp.asarray(-jnp.inf, dtype),
        finite=jnp.asarray(True),
    )


def _block_statistics(family, params, reference, X, weights, hard):
    """Statistics around ``reference`` of the E-step at ``params``, and Σ w log p."""
    if hard:
        log_prob = em.log_joint(family, params, X)
        labels = first_argmax(log_prob)
        best = jnp.max(log_prob, axis=1)
        stats = family.hard_statistics(reference, X, labels, weights, best)
        per_sample = best
    else:
        resp, per_sample = em.e_step(family, params, X)
        stats = family.statistics(reference, X, resp * weights[:, None])
    # A zero weight masks its sample even where its density is zero (−inf).
    total = jnp.sum(jnp.where(weights > 0, weights * per_sample, 0.0))
    return stats, total


def _batch_statistics(family, params, reference, X, weights, hard):
    """:func:`_block_statistics` over the batch, in blocks when N·K·D is large.

    Blocks bound the memory of the E-step's intermediates, as in the engine;
    the statistics are sums, so the blocks' statistics are added.
    """
    n_samples, n_features = X.shape
    n_components = params.weights.shape[0]
    chunk = em.default_chunk_size(n_components, n_features, X.dtype)
    if n_samples <= chunk:
        return _block_statistics(family, params, reference, X, weights, hard)
    n_blocks = -(-n_samples // chunk)
    pad = n_blocks * chunk - n_samples
    X = jnp.pad(X, ((0, pad), (0, 0)), mode="edge")
    weights = jnp.pad(weights, (0, pad))
    blocks = (X.reshape(n_blocks, chunk, n_features), weights.reshape(n_blocks, chunk))

    def add(carry, block):
        stats, total = _block_statistics(family, params, reference, *block, hard)
        return (family.combine_statistics(carry[0], stats), carry[1] + total), None

    shapes = jax.eval_shape(
        lambda: _block_statistics(
            family, params, reference, blocks[0][0], blocks[1][0], hard
        )
    )
    start = (family.empty_statistics(shapes[0]), jnp.zeros((), X.dtype))
    return jax.lax.scan(add, start, blocks)[0]


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return functools.reduce(jnp.logical_and, leaves, jnp.asarray(True))


def step_online(
    family, state: OnlineState, X, weights, t0, alpha, sample_size, *, hard: bool
) -> OnlineState:
    """:func:`online_step` without the jit or the checks (inside compiled programs).

    ``weights`` is an (N,) array; ``sample_size`` a scalar, ≤ 0 meaning the
    total weight seen so far.
    """
    dtype = X.dtype
    weights = jnp.asarray(weights, dtype)
    total = jnp.sum(weights)
    present = total > 0
    # Statistics per unit weight: the batch's weights normalised to sum to one.
    unit = weights / jnp.where(present, total, 1.0)
    batch_stats, mean_log_likelihood = _batch_statistics(
        family, state.params, state.reference, X, unit, hard
    )
    n_steps = state.n_steps + 1
    t = n_steps.astype(dtype)
    gamma = (t + jnp.asarray(t0, dtype)) ** (-jnp.asarray(alpha, dtype))
    coverage = state.coverage * (1 - gamma) + gamma
    step = gamma / coverage
    stats = jax.tree.map(
        lambda s, b: s + step.astype(s.dtype) * (b - s), state.stats, batch_stats
    )
    n_seen = state.n_seen + total
    sample_size = jnp.asarray(sample_size, dtype)
    scale = jnp.where(sample_size > 0, sample_size, n_seen)
    scaled = jax.tree.map(lambda s: scale.astype(s.dtype) * s, stats)
    new_params = family.m_step(scaled, state.reference)
    new_params = em.keep_zero_weights(new_params, state.params)
    # The MAP objective per sample, mean log-likelihood + log prior / n, as the
    # batch fit reports it (with n the sample size the prior weighs against).
    prior_weight = jnp.where(scale > 0, scale, 1.0)
    objective = mean_log_likelihood + family.log_prior(state.params) / prior_weight
    finite = jnp.isfinite(objective) & _all_finite(new_params) & _all_finite(stats)
    candidate = OnlineState(
        params=new_params,
        stats=stats,
        reference=state.reference,
        n_steps=n_steps,
        coverage=coverage,
        n_seen=n_seen,
        log_likelihood=objective,
        finite=finite,
    )
    # A batch of zero weight changes nothing; a non-finite step is not taken
    # (the state keeps its last finite values, and `finite` says so).
    taken = present & finite
    new_state = jax.tree.map(
        lambda new, old: jnp.where(taken, new, old), candidate, state
    )
    return new_state._replace(finite=finite | ~present)


_step_jit = jax.jit(step_online, static_argnames=("hard",))


def online_step(
    family,
    state: OnlineState,
    X: Array,
    weights: Array | None = None,
    *,
    t0: float = 0.0,
    alpha: float = 0.7,
    sample_size: float | None = None,
    hard: bool = False,
) -> OnlineState:
    r"""One step of online (stepwise) EM with a mini-batch: pure and compiled.

    With γ_t = (t + t₀)^{−α}, :math:`Z_t = Z_{t−1}(1 − γ_t) + γ_t` and the
    batch's statistics per unit weight :math:`\bar s`, taken around the
    state's reference point after an E-step at the state's params:

    .. math::
        s_t = s_{t−1} + \frac{γ_t}{Z_t} (\bar s − s_{t−1}), \qquad
        θ_t = \text{m\_step}(n_t s_t),

    with :math:`n_t` = ``sample_size`` or the total weight seen so far (see the
    module's docstring for why). Components of weight exactly zero stay at
    zero. A batch of zero total weight changes nothing; a batch whose step
    would give non-finite statistics or params leaves the state as it was,
    with ``finite`` False.

    Args:
      family: the model family (closed-form M-step, additive statistics).
      state: from :func:`init_online` or a previous step.
      X: the batch, shape (N, D), in the params' dtype.
      weights: optional non-negative sample weights (N,); zeros mask padding.
      t0: the offset t₀ ≥ 0 of the schedule (traced).
      alpha: the decay α ∈ (0.5, 1] of the schedule (traced).
      sample_size: the number of samples the statistics stand for in the
        M-step, hence against which a prior weighs; None: the total weight of
        the batches seen so far (traced).
      hard: hard-assignment EM (static): one-hot responsibilities on the most
        probable component.

    Returns:
      The new :class:`OnlineState`; ``state.log_likelihood`` is the batch's
      mean log-likelihood (plus log prior / n for MAP families) at the params
      before the step.

    Raises:
      ValueError: a family online EM cannot fit, or t₀ or α out of range.

    Examples:
      >>> import jax, jaxmix
      >>> from jaxmix.engine import online
      >>> X = jax.random.normal(jax.random.key(0), (400, 2))
      >>> family = jaxmix.families.Gaussian("diag")
      >>> params = jaxmix.initialize(family, jax.random.key(1), X[:100], 2)
      >>> state = online.init_online(family, params, n_features=2)
      >>> for batch in X.reshape(4, 100, 2):
      ...     state = online.online_step(family, state, batch, t0=0.0, alpha=0.7)
      >>> int(state.n_steps)
      4
    """
    check_family(family)
    check_schedule(t0, alpha)
    X = jnp.asarray(X)
    if weights is None:
        weights = jnp.ones((X.shape[0],), X.dtype)
    return _step(family, state, X, weights, t0, alpha, sample_size, hard)


def _step(family, state, X, weights, t0, alpha, sample_size, hard) -> OnlineState:
    """The compiled step, its scalars in the data's dtype (one program for all)."""
    dtype = X.dtype
    return _step_jit(
        family,
        state,
        X,
        jnp.asarray(weights, dtype),
        jnp.asarray(t0, dtype),
        jnp.asarray(alpha, dtype),
        jnp.asarray(0.0 if sample_size is None else sample_size, dtype),
        hard=hard,
    )


# -- over an iterable of batches ------------------------------------------------
def _batch_source(batches) -> Callable[[], Iterator]:
    """A function returning a fresh iterator over the batches on every call."""
    if callable(batches):
        return batches
    if isinstance(batches, (list, tuple)):
        return lambda: iter(batches)
    if isinstance(batches, np.ndarray) or isinstance(batches, jax.Array):
        raise ValueError(
            "batches must be an iterable of (N, D) arrays or (X, sample_weight) "
            "pairs, not one array: split it, e.g. np.array_split(X, n_batches)"
        )
    if isinstance(batches, Iterable):
        iterator = iter(batches)
        used = []

        def once():
            if used:
                raise ValueError(
                    "batches is a one-shot iterator, which cannot be read again for "
                    "another epoch: pass a list, or a function returning a fresh "
                    "iterator"
                )
            used.append(True)
            return iterator

        return once
    raise ValueError(
        "batches must be a list of arrays, an iterable, or a function returning "
        f"a fresh iterator; got {type(batches).__name__}"
    )


def _checked_batch(index, batch, n_features, dtype):
    """``(X, weights or None)`` of one batch, or a ``ValueError`` that names it.

    Host (NumPy) batches are checked for NaN and infinity; device arrays only
    for their shapes, so that they are not copied back to the host.
    """
    if isinstance(batch, tuple):
        if len(batch) != 2:
            raise ValueError(
                f"batch {index}: a tuple batch must be (X, sample_weight), got "
                f"{len(batch)} entries"
            )
        X, weights = batch
    else:
        X, weights = batch, None
    if not isinstance(X, jax.Array):
        X = np.asarray(X)
        if not np.issubdtype(X.dtype, np.number):
            raise ValueError(f"batch {index}: X must be numeric, got {X.dtype}")
        if not np.all(np.isfinite(X)):
            raise ValueError(f"batch {index}: X contains NaN or infinite values")
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(
            f"batch {index}: X must be 2-D with at least one sample, got shape "
            f"{X.shape}"
        )
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"batch {index}: {X.shape[1]} features, but the first batch has "
            f"{n_features}"
        )
    if weights is not None:
        if not isinstance(weights, jax.Array):
            weights = np.asarray(weights, dtype)
            if not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ValueError(
                    f"batch {index}: sample_weight must be finite and non-negative"
                )
        if weights.shape != (X.shape[0],):
            raise ValueError(
                f"batch {index}: sample_weight must have shape ({X.shape[0]},), got "
                f"{weights.shape}"
            )
    return X, weights


def _padded(X, weights, batch_size, dtype):
    """The batch and its weights, padded to ``batch_size`` rows if shorter.

    The padding rows repeat the last row (in the family's support) with weight
    zero, so one compiled step serves a short last batch.
    """
    n_samples = X.shape[0]
    xp = jnp if isinstance(X, jax.Array) else np
    X = X.astype(dtype)
    weights = xp.ones(n_samples, dtype) if weights is None else weights.astype(dtype)
    pad = batch_size - n_samples
    if pad > 0:
        X = xp.concatenate([X, xp.repeat(X[-1:], pad, axis=0)])
        weights = xp.concatenate([weights, xp.zeros(pad, dtype)])
    return X, weights


def _start(family, params, state, n_features: int, dtype) -> OnlineState:
    """A new state from params, or the given one checked against the data."""
    if state is None:
        return init_online(family, params, n_features)
    expected = _statistic_shapes(family, state.reference, n_features, dtype)
    found = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state.stats)
    if jax.tree.structure(expected) != jax.tree.structure(found) or any(
        a.shape != b.shape
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(found))
    ):
        raise ValueError(
            f"the state to continue from does not fit data of {n_features} "
            "features (its statistics have other shapes)"
        )
    return state


def fit_online(
    family,
    batches,
    params,
    *,
    t0: float = 0.0,
    alpha: float = 0.7,
    n_epochs: int = 1,
    hard: bool = False,
    batch_size: int | None = None,
    verbose: bool = False,
) -> OnlineResult:
    r"""Fit a mixture by online (stepwise) EM, one step per batch.

    Runs :func:`online_step` over the batches, ``n_epochs`` times. The result
    approximates the EM fit of all the batches together (see the module's
    docstring): use it for data too large to revisit often, and the exact
    in-memory or streamed fit when a few passes per iteration are affordable.

    Every batch is padded to ``batch_size`` rows (default: the first batch's)
    with zero-weight rows, so all batches share one compiled step; a longer
    batch compiles a step of its own. From the second epoch on, the M-step's
    sample size (against which a MAP prior weighs) is the first epoch's total
    weight, so passing the same data again does not dilute the prior.

    Args:
      family: the model family (closed-form M-step, additive statistics).
      batches: a list or tuple of (N_b, D) arrays or ``(X, sample_weight)``
        pairs, a function returning a fresh iterator over such batches, or
        (for one epoch) any iterable.
      params: the starting params (e.g. :func:`jaxmix.initialize` on the first
        batch), or an :class:`OnlineState` to continue from.
      t0: the schedule's offset t₀ ≥ 0.
      alpha: the schedule's decay α ∈ (0.5, 1].
      n_epochs: passes over the batches.
      hard: hard-assignment EM (e.g. online K-means with a fixed-variance
        spherical Gaussian).
      batch_size: rows every batch is padded to.
      verbose: print, after every epoch, its mean objective and samples per
        second.

    Returns:
      An :class:`OnlineResult`: the final params, the state (to continue), and
      each step's batch objective.

    Raises:
      ValueError: a family online EM cannot fit, t₀ or α out of range, no
        batches, or a batch with the wrong number of features, NaN or
        infinity, or negative weights (named by its index in the epoch; the
        state is that of the last good batch).

    Examples:
      >>> import numpy as np, jax, jaxmix
      >>> X = np.random.default_rng(0).normal(size=(1000, 2))
      >>> family = jaxmix.families.Gaussian("full")
      >>> start = jaxmix.initialize(family, jax.random.key(0), X[:200], 2)
      >>> result = jaxmix.fit_online(family, np.array_split(X, 5), start)
      >>> result.trace.shape
      (5,)
    """
    check_family(family)
    check_schedule(t0, alpha)
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, numbers.Integral):
        raise ValueError(f"n_epochs must be a positive integer, got {n_epochs!r}")
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be a positive integer, got {n_epochs!r}")
    source = _batch_source(batches)
    state = params if isinstance(params, OnlineState) else None
    dtype = jnp.dtype((params.params if state is not None else params).weights.dtype)
    n_features = None
    sample_size = jnp.zeros((), dtype)  # zero: the weight seen so far
    trace = []
    for epoch in range(n_epochs):
        started, epoch_weight, epoch_trace = time.perf_counter(), 0.0, []
        for index, batch in enumerate(source()):
            X, weights = _checked_batch(index, batch, n_features, dtype)
            if n_features is None:
                n_features = X.shape[1]
                state = _start(family, params, state, n_features, dtype)
            if batch_size is None:
                batch_size = X.shape[0]
            X, weights = _padded(X, weights, batch_size, dtype)
            state = _step(family, state, X, weights, t0, alpha, sample_size, hard)
            epoch_trace.append(state.log_likelihood)
            epoch_weight = epoch_weight + weights.sum()
        if not epoch_trace:
            raise ValueError("batches holds no batch")
        trace.extend(epoch_trace)
        if epoch == 0:
            # From now on the prior weighs as against the data set, counted once.
            sample_size = jnp.asarray(epoch_weight, dtype)
        if verbose:
            values = np.asarray(jnp.stack(epoch_trace))
            elapsed = time.perf_counter() - started
            print(
                f"epoch {epoch + 1}/{n_epochs}: {len(values)} batches, mean "
                f"objective {np.mean(values):.6f}, "
                f"{float(epoch_weight) / elapsed:,.0f} samples/s"
            )
    return OnlineResult(state.params, state, jnp.stack(trace))
