r"""Exact EM over data streamed in chunks: data larger than a device's memory.

EM's statistics are sums over samples, so an iteration need not see all the
data at once: each chunk's statistics are computed by one compiled function,
added on the device, and the family's M-step runs once per pass. The result is
the in-memory :func:`jaxmix.fit` (the same iterations, the same stopping rule),
up to the order in which sums are rounded.

A *source* is anything that can be read again on every pass:

- an (N, D) NumPy array or ``numpy.memmap`` (e.g. ``np.load(path,
  mmap_mode="r")``), read ``chunk_size`` rows at a time;
- the path of a ``.npy`` file (memory-mapped) or of a directory of ``.npy``
  files (read in sorted order, each memory-mapped);
- a list or tuple of arrays, or of ``(X, sample_weight)`` pairs;
- a function returning a fresh iterator over such chunks.

Chunks of any sizes are regrouped into blocks of ``chunk_size`` rows (the last
padded with zero-weight rows that repeat a real row), so the per-chunk
function compiles once. A background thread reads and copies the next block
to the device while the current one is computed. Every chunk is checked on
the host first (two dimensions, the same number of features and dtype as the
first, finite values, non-negative weights); a bad chunk raises ``ValueError``
naming it, in a preliminary pass that also takes the weighted mean (the
origin location families are fitted around) and the total weight, so no EM
state is touched by bad data.

Several starts share each pass: params with a leading restart axis are fitted
side by side (each chunk's statistics are vmapped over the starts), each start
stopping by itself as under ``jax.vmap(jaxmix.fit)``.

A long fit can write a checkpoint (plain arrays in a ``.npz``, no pickle)
every few iterations, written to a temporary file and renamed over the last
one, so a crash never leaves a half-written checkpoint; a fit started with the
same checkpoint path resumes from it and ends as the uninterrupted fit would.
"""

from __future__ import annotations

import functools
import mmap
import os
import pathlib
import queue
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine import em

Array = jax.Array

_CHECKPOINT_FORMAT = 1


# -- sources --------------------------------------------------------------------
def _npy_files(directory: pathlib.Path) -> list[pathlib.Path]:
    files = sorted(directory.glob("*.npy"))
    if not files:
        raise ValueError(f"the directory {str(directory)!r} holds no .npy files")
    return files


def _mapped_file(X: np.ndarray):
    """``(path, byte offset)`` of a C-contiguous array viewing a mapped file.

    None for other arrays. ``np.memmap`` and its slices keep the whole
    mapping's pages resident once touched (they count in the process's
    memory); reading the file's rows into fresh buffers instead keeps the
    memory of a pass at a chunk, whatever the file's size.
    """
    root = X
    while isinstance(root, np.ndarray) and not (
        isinstance(root, np.memmap) and isinstance(root.base, mmap.mmap)
    ):
        root = root.base
    if not isinstance(root, np.memmap) or not X.flags.c_contiguous:
        return None
    if root.filename is None:
        return None
    start = X.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return root.filename, root.offset + start


def _file_rows(path, offset, shape, dtype, chunk_size, sample_weight):
    """Rows of a mapped array read from its file, ``chunk_size`` at a time."""
    n_samples, n_features = shape
    row_bytes = n_features * dtype.itemsize
    with open(path, "rb") as handle:
        for start in range(0, n_samples, chunk_size):
            stop = min(start + chunk_size, n_samples)
            rows = np.empty((stop - start, n_features), dtype)
            handle.seek(offset + start * row_bytes)
            if handle.readinto(memoryview(rows).cast("B")) != rows.nbytes:
                raise ValueError(f"{path}: the file ends before row {stop}")
            weights = None if sample_weight is None else sample_weight[start:stop]
            yield f"rows {start}:{stop}", rows, weights


def _array_chunks(name, X, sample_weight, chunk_size) -> Iterator[tuple]:
    mapped = _mapped_file(X) if X.ndim == 2 else None
    if mapped is not None:
        for rows_name, rows, weights in _file_rows(
            *mapped, X.shape, X.dtype, chunk_size, sample_weight
        ):
            yield (rows_name if name is None else f"{name} {rows_name}"), rows, weights
        return
    if name is not None:
        yield name, X, sample_weight
        return
    for start in range(0, X.shape[0], chunk_size):
        stop = min(start + chunk_size, X.shape[0])
        weights = None if sample_weight is None else sample_weight[start:stop]
        yield f"rows {start}:{stop}", X[start:stop], weights


def _source_chunks(source, sample_weight, chunk_size) -> Iterator[tuple]:
    """``(name, X, weights or None)`` for every chunk of the source, in order."""
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if path.is_dir():
            for file in _npy_files(path):
                yield from _array_chunks(
                    file.name, np.load(file, mmap_mode="r"), None, chunk_size
                )
            return
        source = np.load(path, mmap_mode="r")
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise ValueError(
                f"an array source must be 2-D (n_samples, n_features), got shape "
                f"{source.shape}"
            )
        yield from _array_chunks(None, source, sample_weight, chunk_size)
        return
    if sample_weight is not None:
        raise ValueError(
            "sample_weight goes with an array source; a list or iterator source "
            "gives its weights as (X, sample_weight) chunks"
        )
    if callable(source):
        chunks = source()
    elif isinstance(source, Sequence):
        chunks = source
    else:
        raise ValueError(
            "the source must be readable on every pass: an array, a .npy path, a "
            "directory of .npy files, a list of chunks, or a function returning a "
            f"fresh iterator (got {type(source).__name__})"
        )
    for index, chunk in enumerate(chunks):
        if isinstance(chunk, tuple):
            if len(chunk) != 2:
                raise ValueError(
                    f"chunk {index}: a tuple chunk must be (X, sample_weight), got "
                    f"{len(chunk)} entries"
                )
            yield f"chunk {index}", chunk[0], chunk[1]
        else:
            yield f"chunk {index}", chunk, None


def _checked(
    name, X, weights, expected: dict, full: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The chunk as host arrays, or a ValueError that names it.

    ``expected`` holds the first chunk's number of features and dtype (it is
    filled in from the first chunk), which every chunk must share.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name}: X must be 2-D, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        raise ValueError(f"{name}: X must hold floats, got dtype {X.dtype}")
    expected.setdefault("n_features", X.shape[1])
    expected.setdefault("dtype", X.dtype)
    n_features, dtype = expected["n_features"], expected["dtype"]
    if X.shape[1] != n_features:
        raise ValueError(
            f"{name}: {X.shape[1]} features, but the first chunk has {n_features}"
        )
    if X.dtype != dtype:
        raise ValueError(f"{name}: dtype {X.dtype}, but the first chunk has {dtype}")
    # Later passes check finiteness on the device, fused into the E-step.
    if full and not np.all(np.isfinite(X)):
        raise ValueError(f"{name}: X contains NaN or infinite values")
    if weights is None:
        weights = np.ones(X.shape[0], dtype)
    else:
        weights = np.asarray(weights, dtype)
        if weights.shape != (X.shape[0],):
            raise ValueError(
                f"{name}: sample_weight must have shape ({X.shape[0]},), got "
                f"{weights.shape}"
            )
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"{name}: sample_weight must be finite and non-negative")
    return X, weights


def _blocks(chunks, chunk_size, expected: dict, full: bool) -> Iterator[tuple]:
    """Checked chunks regrouped into (chunk_size, D) blocks with their weights.

    Yields ``(X, weights, n_rows, names)``: ``n_rows`` the block's real rows
    (the last block is padded with zero-weight copies of its last row, so every
    block has one shape and lies in the family's support), ``names`` the
    chunks its rows come from.
    """
    rows, weights, names, held = [], [], [], 0
    for name, X, w in chunks:
        X, w = _checked(name, X, w, expected, full)
        rows.append(X)
        weights.append(w)
        names.append(name)
        held += X.shape[0]
        while held >= chunk_size:
            if len(rows) == 1 and rows[0].shape[0] == chunk_size:
                X_all, w_all = rows[0], weights[0]  # already a block: no copy
            else:
                X_all, w_all = np.concatenate(rows), np.concatenate(weights)
            yield X_all[:chunk_size], w_all[:chunk_size], chunk_size, names
            rows, weights = [X_all[chunk_size:]], [w_all[chunk_size:]]
            names = [name] if rows[0].shape[0] else []
            held -= chunk_size
    if held:
        X_all, w_all = np.concatenate(rows), np.concatenate(weights)
        pad = chunk_size - held
        X_all = np.concatenate([X_all, np.repeat(X_all[-1:], pad, axis=0)])
        w_all = np.concatenate([w_all, np.zeros(pad, w_all.dtype)])
        yield X_all, w_all, held, names


class _Reader:
    """Blocks on the device, read and copied ahead by a thread, pass after pass.

    ``make_blocks()`` returns a fresh iterator over one pass's blocks. The
    thread reads the source (disk, memory map, user code) and starts the
    host-to-device copies up to ``depth`` blocks ahead while the caller's
    computations run; with ``repeat`` it goes straight on into the next pass,
    so the next pass's first blocks are read while this pass's last blocks
    are computed and the M-step runs. An exception in the thread is raised in
    the caller, in order. Use as a context manager: leaving it stops the thread.
    """

    _END = object()  # marks the end of a pass

    def __init__(self, make_blocks, *, repeat: bool, depth: int = 2):
        self._slots: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        # JAX's x64 switch may be a context of the calling thread; the copies
        # must keep the dtype the caller would get.
        x64 = jax.dtypes.canonicalize_dtype(np.float64) == np.float64

        def produce():
            try:
                with jax.enable_x64(x64):
                    while True:
                        for X, w, n_rows, names in make_blocks():
                            item = (jax.device_put(X), jax.device_put(w), n_rows, names)
                            if not self._put(item):
                                return
                        if not self._put(self._END) or not repeat:
                            return
            except BaseException as error:  # re-raised in the consumer
                self._put(error)

        self._thread = threading.Thread(target=produce, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        """Queue ``item``, waiting for room; False once the reader is closed."""
        while not self._stop.is_set():
            try:
                self._slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def next_pass(self) -> Iterator[tuple]:
        """``(X, weights, n_rows, names)`` of every block of the next pass."""
        while True:
            item = self._slots.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


# -- compiled pieces ------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("hard", "block", "batched"))
def _block_statistics(family, params, X, weights, origin, *, hard, block, batched):
    """Statistics and summed log-likelihood of one block, per start if batched.

    Also whether the block's values are all finite (the checking pass looked
    at them on the host; later passes look here, at no extra read).
    """
    finite = jnp.all(jnp.isfinite(X))
    X = X - origin

    def one(p):
        n_components = p.weights.shape[0]
        data, data_weights = em._blocks(family, X, weights, block, n_components)
        return em.accumulate(family, p, data, data_weights, hard=hard)

    return (jax.vmap(one)(params) if batched else one(params)), finite


@jax.jit
def _combine(family, total, block):
    """Running (statistics, log-likelihood sum, all finite) plus one block's.

    One compiled call per block: adding the sums eagerly would dispatch an
    operation each, which costs more than a block's E-step on a CPU.
    """
    return (
        family.combine_statistics(total[0], block[0]),
        total[1] + block[1],
        total[2] & block[2],
    )


@functools.partial(jax.jit, static_argnames=("max_iter", "criterion", "batched"))
def _advance(family, state, stats, ll_sum, total, tol, *, max_iter, criterion, batched):
    def one(s, st, ll):
        new = em.advance(
            family,
            s,
            family.m_step(st, s.params),
            ll,
            total,
            tol,
            max_iter=max_iter,
            criterion=criterion,
        )
        # A stopped start no longer changes (as under a vmapped while_loop).
        running = s.status == em.RUNNING
        return jax.tree.map(lambda a, b: jnp.where(running, a, b), new, s)

    return jax.vmap(one)(state, stats, ll_sum) if batched else one(state, stats, ll_sum)


# -- checkpoints ----------------------------------------------------------------
def _fingerprint(family, params, n_samples, n_features, dtype, max_iter) -> str:
    shapes = [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(params)]
    return (
        f"format={_CHECKPOINT_FORMAT}; family={family!r}; params={shapes}; "
        f"n_samples={n_samples}; n_features={n_features}; dtype={np.dtype(dtype)}; "
        f"max_iter={max_iter}"
    )


def _save_checkpoint(path: pathlib.Path, state, origin, fingerprint: str) -> None:
    leaves = jax.tree.leaves(state)
    arrays = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    directory = path.parent if str(path.parent) else pathlib.Path(".")
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(
                file,
                fingerprint=np.array(fingerprint),
                origin=np.asarray(origin),
                **arrays,
            )
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)  # atomic: the old checkpoint or the new one
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _load_checkpoint(path: pathlib.Path, template, fingerprint: str):
    """The saved loop state and origin, or a ValueError saying what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            if "fingerprint" not in files:
                raise ValueError(f"{str(path)!r} is not a jaxmix stream checkpoint")
            saved = str(data["fingerprint"])
            if saved != fingerprint:
                raise ValueError(
                    f"the checkpoint {str(path)!r} belongs to another fit:\n"
                    f"  saved:   {saved}\n  this fit: {fingerprint}"
                )
            leaves, treedef = jax.tree.flatten(template)
            loaded = [np.array(data[f"leaf_{i}"]) for i in range(len(leaves))]
            origin = np.array(data["origin"])
    except ValueError:
        raise
    except Exception as error:  # truncated zip, missing member, bad header...
        raise ValueError(
            f"the checkpoint {str(path)!r} cannot be read ({type(error).__name__}: "
            f"{error}); delete it to start afresh"
        ) from None
    for old, new in zip(leaves, loaded):
        if np.shape(old) != new.shape or np.asarray(old).dtype != new.dtype:
            raise ValueError(
                f"the checkpoint {str(path)!r} holds arrays of other shapes or "
                "dtypes than this fit's"
            )
    return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in loaded]), origin


# -- the fit --------------------------------------------------------------------
def fit_stream(
    family,
    source,
    params,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    sample_weight=None,
    hard: bool = False,
    chunk_size: int = 65536,
    block_size: int | None = None,
    criterion: str = "objective",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    verbose: bool = False,
) -> em.FitResult:
    r"""Fit a mixture by exact EM over a source read in chunks, one pass per iteration.

    Equal to ``jaxmix.fit(family, X, params, ...)`` on the concatenated data
    (the same iterations and stopping rule; sums rounded in another order),
    while only a block of ``chunk_size`` rows and the model are on the device.
    One host synchronisation per pass decides whether to stop.

    Args:
      family: the model family; its statistics must be sums over samples
        (not K-medians) and its M-step closed-form (generalized EM needs
        several passes per iteration).
      source: an (N, D) array or memmap, a ``.npy`` path, a directory of
        ``.npy`` files, a list of chunks (arrays or ``(X, sample_weight)``
        pairs), or a function returning a fresh iterator of chunks.
      params: the start; with a leading restart axis (e.g. stacked
        :func:`jaxmix.initialize` results) the starts share every pass.
      max_iter, tol, hard, criterion: as in :func:`jaxmix.fit`.
      sample_weight: (N,) weights for an array source.
      chunk_size: rows per block sent to the device (static: one compiled
        function per block shape).
      block_size: rows per inner block of the E-step within a chunk (default
        from K and D, as in :func:`jaxmix.fit`).
      checkpoint: a ``.npz`` path. If it exists, the fit resumes from it
        (after checking that it belongs to this fit); the state is written
        there every ``checkpoint_every`` iterations and at the end.
      checkpoint_every: iterations between checkpoints.
      verbose: print each pass's iteration, objective and samples per second.

    Returns:
      A :class:`jaxmix.engine.em.FitResult` (with a leading restart axis when
      ``params`` has one).

    Raises:
      ValueError: a bad source or chunk (the message names the chunk or file),
        a family that cannot be streamed, or a checkpoint that is unreadable or
        belongs to another fit.
    """
    if not family.additive_statistics:
        raise ValueError(
            f"{type(family).__name__} cannot be streamed: its statistics are not "
            "sums over samples"
        )
    if not family.closed_form_m_step:
        raise ValueError(
            f"{type(family).__name__} has no closed-form M-step; its generalized "
            "M-step needs several passes per iteration, which a stream does not give"
        )
    if criterion not in em.CRITERIA:
        raise ValueError(f"criterion must be one of {em.CRITERIA}, got {criterion!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(
            f"checkpoint_every must be a positive integer, got {checkpoint_every!r}"
        )
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight)
    batched = jnp.ndim(params.weights) == 2
    expected: dict = {}  # the first chunk's number of features and dtype

    def blocks(full=False):
        chunks = _source_chunks(source, sample_weight, chunk_size)
        return _blocks(chunks, chunk_size, expected, full)

    # A first pass checks every chunk and takes the number of samples, the
    # total weight and the weighted sum, before any EM state exists.
    total, weighted_sum, n_samples = None, None, 0
    with _Reader(functools.partial(blocks, full=True), repeat=False) as reader:
        for X, w, n_rows, _ in reader.next_pass():
            if total is None:
                total, weighted_sum = jnp.sum(w), w @ X
            else:
                total, weighted_sum = total + jnp.sum(w), weighted_sum + w @ X
            n_samples += n_rows
    if total is None:
        raise ValueError("the source holds no data")
    n_features, dtype = expected["n_features"], total.dtype
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    origin = (
        weighted_sum / total if family.centred_fit else jnp.zeros_like(weighted_sum)
    )

    def translate(p, offset):
        if batched:
            return jax.vmap(lambda q: family.translate(q, offset)[1])(p)
        return family.translate(p, offset)[1]

    shifted_family = family.translate(
        jax.tree.map(lambda x: x[0], params) if batched else params, -origin
    )[0]
    start_params = translate(params, -origin)
    state = _initial_state(start_params, max_iter, dtype, batched)
    fingerprint = _fingerprint(family, params, n_samples, n_features, dtype, max_iter)
    path = None if checkpoint is None else pathlib.Path(checkpoint)
    if path is not None and path.exists():
        state, saved_origin = _load_checkpoint(path, state, fingerprint)
        if not np.allclose(saved_origin, np.asarray(origin), rtol=1e-12, atol=0):
            raise ValueError(
                f"the checkpoint {str(path)!r} was written for other data (its "
                "data mean differs)"
            )
        origin = jnp.asarray(saved_origin, dtype)
    tol = jnp.asarray(tol, dtype)
    since_saved = 0
    with _Reader(blocks, repeat=True) as reader:
        while bool(np.any(np.asarray(state.status) == em.RUNNING)):
            began = time.perf_counter()
            running, flags = None, []
            for X, w, _, names in reader.next_pass():
                (block_stats, block_ll), finite = _block_statistics(
                    shifted_family,
                    state.params,
                    X,
                    w,
                    origin,
                    hard=hard,
                    block=block_size,
                    batched=batched,
                )
                flags.append((finite, names))
                block = (block_stats, block_ll, finite)
                running = (
                    block
                    if running is None
                    else _combine(shifted_family, running, block)
                )
            stats, ll_sum, all_finite = running
            if not bool(all_finite):  # the one host synchronisation of a pass
                for finite, names in flags:
                    if not bool(finite):
                        raise ValueError(
                            f"{', '.join(names)}: X contains NaN or infinite values"
                        )
            state = _advance(
                shifted_family,
                state,
                stats,
                ll_sum,
                total,
                tol,
                max_iter=max_iter,
                criterion=criterion,
                batched=batched,
            )
            since_saved += 1
            finished = not bool(np.any(np.asarray(state.status) == em.RUNNING))
            if path is not None and (since_saved >= checkpoint_every or finished):
                _save_checkpoint(path, state, origin, fingerprint)
                since_saved = 0
            if verbose:
                seconds = time.perf_counter() - began
                objective = np.asarray(state.log_likelihood)
                print(
                    f"iteration {int(np.max(np.asarray(state.n_iter)))}: objective "
                    f"{np.array2string(objective, precision=8)}, "
                    f"{n_samples / seconds:,.0f} samples/s"
                )
    return em.FitResult(
        params=translate(state.params, origin),
        log_likelihood=state.log_likelihood,
        n_iter=state.n_iter,
        converged=state.status == em.CONVERGED,
        status=state.status,
        trace=state.trace[..., :max_iter],
    )


def _initial_state(params, max_iter, dtype, batched) -> em.LoopState:
    def one(p):
        return em.LoopState(
            params=p,
            log_likelihood=jnp.asarray(-jnp.inf, dtype),
            n_iter=jnp.zeros((), jnp.int32),
            status=jnp.asarray(em.RUNNING if max_iter > 0 else em.MAX_ITER, jnp.int32),
            trace=jnp.full((max_iter + 1,), jnp.nan, dtype),
        )

    return jax.vmap(one)(params) if batched else one(params)
