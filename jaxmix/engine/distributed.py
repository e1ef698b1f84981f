r"""Several devices and several processes, one fit: data sharded along samples.

EM's statistics are sums over samples, so a fit whose data is one global
``jax.Array`` sharded along samples is the single-device fit: each device
computes the statistics of the rows it holds, XLA adds them across devices
(an all-reduce, across processes over JAX's own runtime: gloo or MPI on CPU,
NCCL on GPU, the interconnect on TPU) and every device runs the same small
M-step. :func:`jaxmix.fit` and :func:`jaxmix.initialize` need no change for
this; what they need is the data as a global array whose padding is masked,
laid out so that blocks of samples do not straddle devices, which
:func:`shard_samples` builds from each process's own rows.

One program, several processes: every process runs the same script, calls
``jax.distributed.initialize`` first, passes *its own* rows to
:func:`shard_samples` and then calls the same jaxmix functions with the same
arguments (the same key, the same start). Each call is a collective: every
process must make it, in the same order. The results (parameters, objective,
status) are replicated, so every process can read them with ``np.asarray``.

.. code-block:: python

    import jax, jaxmix
    from jaxmix.engine import distributed

    jax.distributed.initialize()  # on a managed cluster (SLURM, TPU pods, ...)
    local_X = load_my_rows(jax.process_index())  # (n_p, D); n_p may differ
    data = distributed.shard_samples(local_X, n_components=16)
    family = jaxmix.families.Gaussian("full")
    params = jaxmix.initialize(
        family, jax.random.key(0), data.X, 16, sample_weight=data.sample_weight
    )
    result = jaxmix.fit(
        family, data.X, params,
        sample_weight=data.sample_weight, chunk_size=data.chunk_size,
    )

On CPU the collectives run over gloo (JAX's default CPU implementation,
``jax.config.update("jax_cpu_collectives_implementation", "gloo")`` before
``jax.distributed.initialize``). With one process and several local devices
the same code shards over the local devices and needs no initialisation.

Starting points: :func:`jaxmix.initialize` runs unchanged on the sharded
data, given ``sample_weight=data.sample_weight`` (so that no padding row is
drawn). The ``"random"`` and ``"random_from_data"`` starts exchange only sums
and the (N,) weights; the k-means starts (``"kmeans"``, ``"k-means++"``) make
XLA gather the whole data onto every device once. For data beyond one
device's memory, start from a subsample instead: each process contributes a
few rows (``multihost_utils.process_allgather``), every process runs
``jaxmix.initialize`` on the gathered rows,
``multihost_utils.broadcast_one_to_all`` makes every start process 0's bit
for bit, and the fit runs on all the data.

What needs the whole data on one host does not run on arrays spread over
processes: the scikit-learn-style estimators (they validate and convert the
data with NumPy) and :func:`jaxmix.engine.batch.fit_restarts` (it checks the
sample weights on the host, and its blocks ignore the devices);
:func:`fit_restarts` here runs the same restarts on sharded data.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmix.engine import batch, em, initialization

Array = jax.Array

AXIS = "data"


class ShardedSamples(NamedTuple):
    """Data laid out over all devices of all processes, padding masked."""

    X: Array  # (N_pad, D)  global, sharded along samples
    sample_weight: Array  # (N_pad,)  the given weights, zero on padding rows
    chunk_size: int  # for jaxmix.fit: blocks aligned with the devices


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh ``"data"`` over all devices, each process's devices together.

    ``jax.make_array_from_process_local_data`` gives each process one
    contiguous range of rows; ordering the devices by process keeps that range
    on the process's own devices, so placing the data moves nothing.
    """
    if devices is None:
        devices = jax.devices()
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (AXIS,))


def _local_data(X, sample_weight, missing_values=False):
    """This process's rows and weights as NumPy arrays, or a reason to reject them."""
    X = np.asarray(X)
    if X.ndim != 2:
        return X, None, f"X must have shape (n, D), got {X.shape}"
    dtype = jax.dtypes.canonicalize_dtype(X.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    X = X.astype(dtype, copy=False)
    problem = None
    if missing_values:
        problem = _missing_problem(X)
    elif not np.all(np.isfinite(X)):
        problem = (
            "X contains NaN or infinity (for NaN as missing values, pass "
            "missing_values=True and fit a family made with missing_values=True)"
        )
    if problem is not None:
        return X, None, problem
    if sample_weight is None:
        return X, np.ones(X.shape[0], dtype), None
    weights = np.asarray(sample_weight, dtype)
    if weights.shape != X.shape[:1]:
        return (
            X,
            None,
            f"sample_weight must have shape {X.shape[:1]}, got {weights.shape}",
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        return X, None, "sample_weight must be finite and non-negative"
    return X, weights, None


def _missing_problem(X) -> str | None:
    """Why X cannot be data with missing values (NaN), or None."""
    if np.any(np.isinf(X)):
        return "X contains infinity"
    empty = np.flatnonzero(np.all(np.isnan(X), axis=1)) if X.shape[1] else []
    if len(empty):
        return (
            f"row {int(empty[0])} of this process's X has no observed value "
            f"({len(empty)} such rows)"
        )
    return None


def _agree(X, local_devices, problem):
    """Every process's row count, device count, features and dtype; one all-gather.

    A process whose data was rejected says so here, so that every process
    raises instead of the others waiting in the fit's first collective.
    """
    mine = np.array(
        [
            X.shape[0] if X.ndim == 2 else 0,
            local_devices,
            X.shape[-1] if X.ndim == 2 else -1,
            np.dtype(X.dtype).num,
            problem is not None,
        ],
        np.int64,
    )
    if jax.process_count() == 1:
        return mine[None]
    return np.asarray(multihost_utils.process_allgather(mine))


def _check_agreement(table):
    rejected = np.flatnonzero(table[:, 4])
    if rejected.size:
        raise ValueError(
            f"the data of process {int(rejected[0])} was rejected (see its error)"
        )
    for column, what in ((1, "local devices"), (2, "features"), (3, "dtypes")):
        if np.unique(table[:, column]).size > 1:
            raise ValueError(
                f"every process must have the same {what}; got "
                f"{table[:, column].tolist()} by process"
            )


def _padding_row(X, table):
    """A real row to repeat as padding, from another process if this one has none.

    Every process makes the same decision from the agreed table, so either all
    of them join the all-gather or none does.
    """
    if table is None or table[:, 0].all():
        return X[-1] if X.shape[0] else None
    if not table[:, 0].any():
        raise ValueError("no process has any rows")
    mine = X[-1] if X.shape[0] else np.zeros(X.shape[1:], X.dtype)
    rows = np.asarray(multihost_utils.process_allgather(mine))
    return X[-1] if X.shape[0] else rows[int(np.flatnonzero(table[:, 0])[0])]


def _block_rows(rows_per_device: int, block_rows: int) -> int:
    """Rows per device and block: at most ``block_rows``, dividing the rows evenly.

    With ``ceil(R / block_rows)`` blocks of (nearly) equal size, a device pads
    fewer rows than it has blocks, where blocks of exactly ``block_rows`` could
    pad almost a whole block.
    """
    n_blocks = -(-rows_per_device // block_rows)
    return -(-rows_per_device // n_blocks)


def shard_samples(
    X,
    sample_weight=None,
    *,
    n_components: int | None = None,
    block_rows: int | None = None,
    rows_per_process: int | None = None,
    mesh: Mesh | None = None,
    missing_values: bool = False,
) -> ShardedSamples:
    r"""This process's rows, as its part of one array sharded over every device.

    Every process calls it with its own rows (a NumPy array, a memory map);
    processes may hold different numbers of rows. Each process's rows are
    padded to a common size, split evenly over its local devices, and
    assembled with ``jax.make_array_from_process_local_data`` into one global
    array sharded along samples over :func:`data_mesh`. Padding rows repeat a
    real row (so they lie in every family's support and have finite log
    densities) and have sample weight zero, so they change no statistic, no
    objective and no initialisation.

    The common size is agreed by one tiny collective (an all-gather of each
    process's row count, device count, feature count and dtype), which also
    turns a rejected input on one process into a ``ValueError`` on every
    process. Passing ``rows_per_process`` (an upper bound on any process's row
    count, the same on every process) skips it; a process without rows then
    needs the collective (it has no row to pad with).

    The rows are also padded to whole blocks: ``chunk_size`` in the result is
    the block size to give :func:`jaxmix.fit`, such that every block holds
    the same number of rows on every device. A block size that does not fit
    the layout would make XLA gather the whole data set onto every device once
    per fit. Each block's statistics are added across devices as the block is
    done, so across processes every block costs collective round trips:
    larger blocks (``block_rows``) trade cache use for fewer of them.

    Args:
      X: this process's rows, shape (n, D); may be (0, D).
      sample_weight: optional non-negative weights of these rows, shape (n,).
      n_components: K of the fits to come: sizes the blocks (the E-step's
        N·K·D intermediates of one block stay in cache), as in
        :func:`jaxmix.engine.em.default_chunk_size`. None with ``block_rows``
        None: no blocking, the whole data is one block (for small data, and
        for families whose statistics are not sums, such as K-medians).
      block_rows: rows per device in one block, overriding ``n_components``.
      rows_per_process: the common per-process size; None agrees on it.
      mesh: a 1-D mesh with axis ``"data"``; default :func:`data_mesh`.
      missing_values: NaN entries are missing values (for a family made with
        ``missing_values=True``) rather than an error; a row with no
        observed value is still an error, and so are infinities.

    Returns:
      A :class:`ShardedSamples` ``(X, sample_weight, chunk_size)``: ``X`` is
      (N_pad, D) with N_pad at least the total number of rows, and
      ``chunk_size`` divides N_pad (it is N_pad when the data is one block).

    Raises:
      ValueError: X is not 2-D or not finite (NaN allowed with
        ``missing_values``, but not a row of NaN), bad weights, processes that
        disagree on features, dtype or local devices, ``rows_per_process``
        smaller than this process's rows.

    Examples:
      >>> import numpy as np, jaxmix
      >>> from jaxmix.engine import distributed
      >>> data = distributed.shard_samples(np.ones((10, 2)), n_components=2)
      >>> data.X.shape[0] >= 10, float(data.sample_weight.sum())
      (True, 10.0)
    """
    mesh = data_mesh() if mesh is None else mesh
    if mesh.axis_names != (AXIS,):
        raise ValueError(f"mesh must be 1-D with axis {AXIS!r}, got {mesh.axis_names}")
    local_devices = sum(
        d.process_index == jax.process_index() for d in mesh.devices.flat
    )
    n_devices = mesh.devices.size
    X, weights, problem = _local_data(X, sample_weight, missing_values)
    if rows_per_process is None:
        table = _agree(X, local_devices, problem)
        if problem is not None:
            raise ValueError(problem)
        _check_agreement(table)
        most = int(table[:, 0].max())
    else:
        if problem is not None:
            raise ValueError(problem)
        if rows_per_process < X.shape[0]:
            raise ValueError(
                f"rows_per_process={rows_per_process} is smaller than this "
                f"process's {X.shape[0]} rows"
            )
        if not X.shape[0]:
            raise ValueError(
                "a process without rows needs rows_per_process=None (the padding "
                "row is fetched from another process)"
            )
        table = None
        most = rows_per_process
    rows_per_device = max(1, -(-most // local_devices))
    if block_rows is None and n_components is not None:
        block_rows = em.default_chunk_size(n_components, X.shape[1], X.dtype)
    if block_rows is not None and rows_per_device > block_rows:
        per_block = _block_rows(rows_per_device, block_rows)
        rows_per_device = per_block * -(-rows_per_device // per_block)
    else:
        per_block = rows_per_device
    row = _padding_row(X, table)
    pad = rows_per_device * local_devices - X.shape[0]
    if pad:
        X = np.concatenate([X, np.broadcast_to(row, (pad, X.shape[1]))])
        weights = np.concatenate([weights, np.zeros(pad, weights.dtype)])
    n_global = rows_per_device * n_devices
    global_X = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P(AXIS, None)), X, (n_global, X.shape[1])
    )
    global_weights = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P(AXIS)), weights, (n_global,)
    )
    return ShardedSamples(global_X, global_weights, per_block * n_devices)


def _restarts(
    family,
    X,
    keys,
    tol,
    sample_weight,
    *,
    n_components,
    method,
    max_iter,
    hard,
    criterion,
    chunk_size,
    batch_size,
) -> batch.RestartsResult:
    """One start per key, every start fitted in blocks of ``chunk_size``, the best."""

    def start(key):
        return initialization.initial_params(
            family, key, X, sample_weight, n_components=n_components, method=method
        )

    starts = jax.lax.map(start, keys, batch_size=batch_size)
    results = batch.fit_starts(
        family,
        X,
        starts,
        tol,
        sample_weight,
        max_iter=max_iter,
        hard=hard,
        criterion=criterion,
        chunk_size=chunk_size,
        batch_size=batch_size,
    )
    best, index = batch.select_best(results)
    return batch.RestartsResult(best, results, index)


_restarts_jit = jax.jit(
    _restarts,
    static_argnames=(
        "n_components",
        "method",
        "max_iter",
        "hard",
        "criterion",
        "chunk_size",
        "batch_size",
    ),
)


def fit_restarts(
    family,
    data: ShardedSamples,
    key: Array,
    n_components: int,
    n_init: int,
    *,
    method: str = "kmeans",
    max_iter: int = 100,
    tol: float = 1e-3,
    hard: bool = False,
    criterion: str = "objective",
    batch_size: int | None = None,
) -> batch.RestartsResult:
    r""":func:`jaxmix.engine.batch.fit_restarts` on data from :func:`shard_samples`.

    The same restarts (restart ``r`` starts from ``jaxmix.initialize(family,
    keys[r], data.X, n_components, method, data.sample_weight)`` with ``keys =
    jax.random.split(key, n_init)``) and the same choice of the best, for data
    spread over processes: the weights were checked by :func:`shard_samples`
    on each process (the batch driver checks them on the host, which holds
    only its own rows), and the fits run in the blocks of ``data.chunk_size``.
    Every process calls it with the same arguments.

    Args:
      family: the model family.
      data: the output of :func:`shard_samples`.
      key: a JAX PRNG key, the same on every process.
      n_components: K (static).
      n_init: number of restarts R (static).
      method: initialisation (static), one of
        ``jaxmix.engine.initialization.INIT_METHODS``.
      max_iter: maximum EM iterations per restart (static).
      tol: convergence threshold on the change of the objective (traced).
      hard: hard-assignment EM (static).
      criterion: what ``tol`` applies to (static), as in :func:`jaxmix.fit`.
      batch_size: restarts vmapped together (static); None picks
        ``min(n_init, default_batch_size(N, K, D))`` as the batch driver does.
        Results do not depend on it.

    Returns:
      A :class:`jaxmix.engine.batch.RestartsResult` ``(best, all, best_index)``,
      replicated on every process.

    Raises:
      ValueError: bad ``n_components``, ``n_init``, ``method`` or ``max_iter``.
    """
    n_samples, n_features = data.X.shape
    if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
        raise ValueError(f"n_init must be a positive integer, got {n_init!r}")
    if not 1 <= n_components <= n_samples:
        raise ValueError(
            f"n_components must be between 1 and n_samples={n_samples}, "
            f"got {n_components}"
        )
    if method not in initialization.INIT_METHODS:
        raise ValueError(
            f"method must be one of {initialization.INIT_METHODS}, got {method!r}"
        )
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    if batch_size is None:
        batch_size = batch.default_batch_size(n_samples, n_components, n_features)
    batch_size = min(n_init, batch_size)
    return _restarts_jit(
        family,
        data.X,
        jax.random.split(key, n_init),
        tol,
        data.sample_weight,
        n_components=n_components,
        method=method,
        max_iter=max_iter,
        hard=hard,
        criterion=criterion,
        chunk_size=data.chunk_size,
        batch_size=batch_size,
    )
