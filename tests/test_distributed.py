"""Several devices and several processes, one fit: the sharding helper and gloo runs.

The references are the single-process, single-device fits of the same rows,
unpadded; the multi-device and multi-process runs happen in subprocesses (a
process's device count and its ``jax.distributed`` membership are fixed when
its backend starts).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmix
from jaxmix.engine import batch, distributed

TIMEOUT = 180
N, D, K = 600, 3, 2
SEED = 0


@pytest.fixture(autouse=True)
def _float64(x64):
    yield


def _data() -> np.ndarray:
    """Two well separated clusters, shuffled: every process sees both."""
    rng = np.random.default_rng(SEED)
    X = np.r_[rng.normal(0, 1, (N // 2, D)), rng.normal(4, 1, (N - N // 2, D))]
    return X[rng.permutation(N)]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _assert_params_close(actual, expected, rtol=1e-9, atol=1e-9):
    for name, a, b in zip(expected._fields, actual, expected):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


# -- one process, one device: layout and validation (no compilation) ----------------


def test_padding_repeats_a_real_row_with_weight_zero():
    rng = np.random.default_rng(1)
    X, w = rng.normal(size=(7, 2)), rng.uniform(1, 2, 7)
    data = distributed.shard_samples(X, w, block_rows=3)
    # 7 rows in blocks of at most 3: three blocks of 3, two padding rows.
    assert data.X.shape == (9, 2) and data.chunk_size == 3
    np.testing.assert_array_equal(np.asarray(data.X)[:7], X)
    np.testing.assert_array_equal(np.asarray(data.X)[7:], X[[-1, -1]])
    np.testing.assert_array_equal(np.asarray(data.sample_weight), np.r_[w, 0, 0])
    assert data.X.sharding.spec == jax.sharding.PartitionSpec("data", None)


def test_missing_values_are_kept_when_asked():
    X = np.array([[0.0, np.nan], [1.0, 2.0], [np.nan, 3.0], [4.0, 5.0], [np.nan, 6.0]])
    data = distributed.shard_samples(X, block_rows=3, missing_values=True)
    # 5 rows in blocks of at most 3: two blocks of 3, one padding row.
    assert data.X.shape == (6, 2) and data.chunk_size == 3
    np.testing.assert_array_equal(np.asarray(data.X)[:5], X)
    np.testing.assert_array_equal(np.asarray(data.X)[5:], X[[-1]])
    np.testing.assert_array_equal(np.asarray(data.sample_weight), [1, 1, 1, 1, 1, 0])
    with pytest.raises(ValueError, match="missing_values=True"):
        distributed.shard_samples(X)
    with pytest.raises(ValueError, match="infinity"):
        distributed.shard_samples(np.r_[X, [[np.inf, 0.0]]], missing_values=True)
    with pytest.raises(ValueError, match=r"row 5 .* no observed value \(1 such"):
        distributed.shard_samples(np.r_[X, [[np.nan, np.nan]]], missing_values=True)


def test_one_block_unless_asked():
    data = distributed.shard_samples(np.ones((50, 2)))
    assert data.X.shape == (50, 2) and data.chunk_size == 50
    small = distributed.shard_samples(np.ones((50, 2)), n_components=2)
    assert small.chunk_size == 50  # far below the default block size


def test_given_rows_per_process_sets_the_size():
    data = distributed.shard_samples(np.ones((5, 2)), rows_per_process=8)
    assert data.X.shape == (8, 2)
    assert float(jnp.sum(data.sample_weight)) == 5.0
    with pytest.raises(ValueError, match="rows_per_process=4 is smaller"):
        distributed.shard_samples(np.ones((5, 2)), rows_per_process=4)


@pytest.mark.parametrize(
    ("X", "weights", "message"),
    [
        (np.ones(4), None, "shape"),
        (np.array([[0.0], [np.nan]]), None, "NaN"),
        (np.ones((3, 2)), np.array([1.0, -1.0, 1.0]), "non-negative"),
        (np.ones((3, 2)), np.ones(2), "sample_weight must have shape"),
        (np.ones((0, 2)), None, "no process has any rows"),
    ],
)
def test_rejects_bad_input(X, weights, message):
    with pytest.raises(ValueError, match=message):
        distributed.shard_samples(X, weights)


# -- one process, three devices -------------------------------------------------------

_THREE_DEVICES = textwrap.dedent(
    """
    import re
    import jax, jax.numpy as jnp, numpy as np
    import jaxmix
    from jaxmix.engine import distributed
    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 3
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (301, 3)), rng.normal(4, 1, (300, 3))]  # 601 rows
    family = jaxmix.families.Gaussian("full")
    start = jaxmix.initialize(family, jax.random.key(0), jnp.asarray(X), 2)
    local = jaxmix.fit(family, jnp.asarray(X), start, max_iter=20, tol=-1.0)

    data = distributed.shard_samples(X, block_rows=50)
    assert data.X.shape[0] % 3 == 0 and data.X.shape[0] % data.chunk_size == 0
    assert data.chunk_size < data.X.shape[0]  # several blocks
    assert len(data.X.sharding.device_set) == 3

    def fit(X, w):
        return jaxmix.fit(family, X, start, max_iter=20, tol=-1.0,
                          sample_weight=w, chunk_size=data.chunk_size)

    compiled = jax.jit(fit).lower(data.X, data.sample_weight).compile()
    sharded = compiled(data.X, data.sample_weight)
    for a, b in zip(local.params, sharded.params):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(local.log_likelihood, sharded.log_likelihood,
                               rtol=1e-12)
    # Blocks aligned with the devices: only statistics cross devices (sums,
    # and the per-device parts combined once a pass), never the data.
    hlo = compiled.as_text()
    moved = re.findall(r"(all-gather|all-to-all)(?:-start)?\\(", hlo)
    assert "all-reduce" in hlo and not moved, moved

    # Missing values: the same fit on sharded data with NaN entries (the
    # rows are ordered by their count of missing entries inside the program).
    gaps = np.where(rng.random(X.shape) < 0.2, np.nan, X)
    gaps[np.isnan(gaps).all(axis=1), 0] = X[np.isnan(gaps).all(axis=1), 0]
    missing = jaxmix.families.Gaussian("full", missing_values=True)
    local = jaxmix.fit(missing, jnp.asarray(gaps), start, max_iter=20, tol=-1.0)
    data = distributed.shard_samples(gaps, block_rows=50, missing_values=True)
    assert len(data.X.sharding.device_set) == 3
    sharded = jaxmix.fit(missing, data.X, start, max_iter=20, tol=-1.0,
                         sample_weight=data.sample_weight, chunk_size=data.chunk_size)
    for a, b in zip(local.params, sharded.params):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(local.log_likelihood, sharded.log_likelihood,
                               rtol=1e-12)

    print("OK")
    """
)


def test_three_local_devices_give_the_unsharded_fit():
    out = subprocess.run(
        [sys.executable, "-c", _THREE_DEVICES],
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=3"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "OK" in out.stdout


# -- two processes on 127.0.0.1, gloo collectives ---------------------------------

# Each process holds its own rows (start, stop) of the same data set; the
# reference fits the rows in ``real``. The three layouts share one global shape
# (430 rows per process), so each program compiles once: equal halves with the
# common size given, unequal parts with the size agreed by the helper's
# collective, and a process without rows (its padding row comes from the other).
ROWS_PER_PROCESS = 430
LAYOUTS = {
    "equal": {"parts": [[0, 300], [300, 600]], "rows": 430, "real": 600},
    "unequal": {"parts": [[0, 170], [170, 600]], "rows": None, "real": 600},
    "empty": {"parts": [[0, 0], [0, 430]], "rows": None, "real": 430},
}

_WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_x64", True)
    port, process_id, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    config = json.loads(sys.argv[4])
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2,
        process_id=process_id, initialization_timeout=60,
        shutdown_timeout_seconds=30,
    )
    from jax.experimental import multihost_utils
    import jaxmix
    from jaxmix.engine import distributed
    assert jax.process_count() == 2 and jax.local_device_count() == 1

    n, d, k = config["n"], config["d"], config["k"]
    rng = np.random.default_rng(config["seed"])
    X = np.r_[rng.normal(0, 1, (n // 2, d)), rng.normal(4, 1, (n - n // 2, d))]
    X = X[rng.permutation(n)]
    family = jaxmix.families.Gaussian("full")
    saved = {}
    for name, layout in config["layouts"].items():
        start, stop = layout["parts"][process_id]
        data = distributed.shard_samples(
            X[start:stop], rows_per_process=layout["rows"], block_rows=300
        )
        params = jaxmix.initialize(family, jax.random.key(0), data.X, k,
                                   sample_weight=data.sample_weight)
        result = jaxmix.fit(family, data.X, params, max_iter=15, tol=-1.0,
                            sample_weight=data.sample_weight,
                            chunk_size=data.chunk_size)
        padded, weights = multihost_utils.process_allgather(
            (data.X, data.sample_weight), tiled=True)
        saved.update({f"{name}_X": padded, f"{name}_weights": weights,
                      f"{name}_chunk": data.chunk_size,
                      f"{name}_ll": np.asarray(result.log_likelihood)})
        for field, value in params._asdict().items():
            saved[f"{name}_start_{field}"] = np.asarray(value)
        for field, value in result.params._asdict().items():
            saved[f"{name}_fit_{field}"] = np.asarray(value)
        if name == "unequal":
            restarts = distributed.fit_restarts(
                family, data, jax.random.key(1), k, 2,
                method="random_from_data", max_iter=10)
            saved["restarts_index"] = np.asarray(restarts.best_index)
            for field, value in restarts.best.params._asdict().items():
                saved[f"restarts_{field}"] = np.asarray(value)
    np.savez(f"{outdir}/process{process_id}.npz", **saved)
    print("DONE")
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_two_processes(outdir) -> None:
    port = _free_port()
    config = json.dumps({"n": N, "d": D, "k": K, "seed": SEED, "layouts": LAYOUTS})
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(port), str(i), str(outdir), config],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        outputs = [process.communicate() for process in processes]
    report = "\n".join(
        f"--- process {i} (exit {p.returncode}) stderr:\n{err[-3000:]}"
        for i, (p, (_, err)) in enumerate(zip(processes, outputs))
    )
    assert all(p.returncode == 0 for p in processes), report
    assert all("DONE" in out for out, _ in outputs), report


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("distributed")
    with jax.enable_x64(True):
        _run_two_processes(outdir)
    return [dict(np.load(outdir / f"process{i}.npz")) for i in range(2)]


def _expected_layout(X, parts, rows=ROWS_PER_PROCESS):
    """Each process's rows padded with its last row (or the first real one)."""
    real = [X[start:stop] for start, stop in parts]
    fallback = next(part for part in real if len(part))[-1]
    padded, weights = [], []
    for part in real:
        row = part[-1] if len(part) else fallback
        padded.append(np.r_[part, np.tile(row, (rows - len(part), 1))])
        weights.append(np.r_[np.ones(len(part)), np.zeros(rows - len(part))])
    return np.concatenate(padded), np.concatenate(weights)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_two_processes_give_the_single_process_fit(two_process_results, name):
    first, second = two_process_results
    family = jaxmix.families.Gaussian("full")
    layout = LAYOUTS[name]
    X = _data()
    start = family.params_type(
        *(first[f"{name}_start_{k}"] for k in family.params_type._fields)
    )
    fitted = family.params_type(
        *(first[f"{name}_fit_{k}"] for k in family.params_type._fields)
    )
    # Results are replicated: both processes hold the same bits.
    for key, value in first.items():
        np.testing.assert_array_equal(second[key], value, err_msg=key)

    # 430 rows per process in two blocks of 215: 860 rows, blocks of 430.
    padded, weights = _expected_layout(X, layout["parts"])
    np.testing.assert_array_equal(first[f"{name}_X"], padded)
    np.testing.assert_array_equal(first[f"{name}_weights"], weights)
    assert int(first[f"{name}_chunk"]) == 430

    # The start is jaxmix.initialize of the padded data on one device.
    expected_start = jaxmix.initialize(
        family,
        jax.random.key(0),
        jnp.asarray(padded),
        K,
        sample_weight=jnp.asarray(weights),
    )
    _assert_params_close(start, expected_start)

    # The fit is the single-process fit of the real rows from that start.
    reference = jaxmix.fit(
        family, jnp.asarray(X[: layout["real"]]), start, max_iter=15, tol=-1.0
    )
    _assert_params_close(fitted, reference.params)
    np.testing.assert_allclose(
        first[f"{name}_ll"], reference.log_likelihood, rtol=1e-12
    )


def test_two_process_restarts_match_the_batch_driver(two_process_results):
    first, _ = two_process_results
    family = jaxmix.families.Gaussian("full")
    padded, weights = _expected_layout(_data(), LAYOUTS["unequal"]["parts"])
    expected = batch.fit_restarts(
        family,
        jnp.asarray(padded),
        jax.random.key(1),
        K,
        2,
        method="random_from_data",
        max_iter=10,
        sample_weight=jnp.asarray(weights),
    )
    assert int(first["restarts_index"]) == int(expected.best_index)
    best = family.params_type(
        *(first[f"restarts_{k}"] for k in family.params_type._fields)
    )
    _assert_params_close(best, expected.best.params)
