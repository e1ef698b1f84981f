"""The estimators' streamed fit: data larger than the device budget, by fit_stream.

When a user's data (typically a ``numpy.memmap``) is larger than the
estimator's ``device_budget``, ``fit`` does not copy it to the device: the
restarts are initialised on a random subsample of rows (as scikit-learn's
``MiniBatchKMeans`` initialises on ``init_size`` rows), then fitted together by
:func:`jaxmix.fit_stream`, exact EM over the whole data read in chunks, all
restarts sharing each pass. The best restart is chosen by the same rule as
in memory (:func:`jaxmix.engine.batch.select_best`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine import batch, initialization, stream

#: Rows of the subsample the restarts are initialised on.
INIT_SAMPLES = 65536
#: Rows per chunk sent to the device.
CHUNK_ROWS = 65536


def streams(X: np.ndarray, device_budget) -> bool:
    """Whether data of this size is fitted streamed (larger than the budget)."""
    return device_budget is not None and X.nbytes > device_budget


def subsample(X: np.ndarray, weights: np.ndarray, rng: np.random.RandomState):
    """At most :data:`INIT_SAMPLES` random rows (in file order) and their weights."""
    n_samples = X.shape[0]
    if n_samples <= INIT_SAMPLES:
        return np.asarray(X), weights
    rows = np.sort(rng.choice(n_samples, INIT_SAMPLES, replace=False))
    return np.asarray(X[rows]), weights[rows]


def chunks(X: np.ndarray, weights: np.ndarray):
    """``(X, weights, n_rows)`` device chunks of :data:`CHUNK_ROWS` rows.

    The last is padded with zero-weight copies of its last row, so every
    chunk has one shape (one compiled program).
    """
    n_samples = X.shape[0]
    for start in range(0, n_samples, CHUNK_ROWS):
        rows = np.asarray(X[start : start + CHUNK_ROWS])
        w = np.asarray(weights[start : start + CHUNK_ROWS], X.dtype)
        n_rows = rows.shape[0]
        if n_samples > CHUNK_ROWS and n_rows < CHUNK_ROWS:
            pad = CHUNK_ROWS - n_rows
            rows = np.concatenate([rows, np.repeat(rows[-1:], pad, axis=0)])
            w = np.concatenate([w, np.zeros(pad, w.dtype)])
        yield jnp.asarray(rows), jnp.asarray(w), n_rows


def streamed_restarts(
    family,
    X: np.ndarray,
    weights: np.ndarray | None,
    start,
    *,
    method: str | None,
    keys,
    n_components: int,
    tol: float,
    max_iter: int,
    rng: np.random.RandomState,
    hard: bool = False,
    criterion: str = "objective",
) -> batch.RestartsResult:
    """Restarts initialised on a subsample and fitted by streamed exact EM.

    ``method`` None: every restart starts from ``start`` (complete params).
    Otherwise ``start`` is a dict of the fields the user gave, and each
    restart is initialised by ``method`` on the subsample with those fields
    replaced. Call it in the data's precision (``precision(X.dtype)``).
    """
    dtype = X.dtype
    n_init = keys.shape[0]
    if weights is None:
        weights = np.ones(X.shape[0], dtype)
    if method is None:
        starts = jax.tree.map(
            lambda a: jnp.broadcast_to(jnp.asarray(a, dtype), (n_init, *np.shape(a))),
            start,
        )
    else:
        sample, sample_weights = subsample(X, weights, rng)
        sample = jnp.asarray(sample)
        sample_weights = jnp.asarray(sample_weights, dtype)
        given = {name: jnp.asarray(value, dtype) for name, value in start.items()}

        def one(key):
            params = initialization.initial_params(
                family,
                key,
                sample,
                sample_weights,
                n_components=n_components,
                method=method,
            )
            return params._replace(**given)

        starts = jax.jit(jax.vmap(one))(keys)
    results = stream.fit_stream(
        family,
        X,
        starts,
        max_iter=max_iter,
        tol=tol,
        sample_weight=weights,
        hard=hard,
        criterion=criterion,
        chunk_size=CHUNK_ROWS,
    )
    best, index = batch.select_best(results)
    return batch.RestartsResult(best, results, index)
