"""Exact EM over a stream against the in-memory fit (float64).

The reference is ``jaxmix.fit`` on the whole array: a streamed fit runs the
same iterations and stopping rule, so parameters, objective, trace and
iteration count must agree to round-off (the sums are taken in another
order), whatever the source and however the chunks cut the data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmix
from jaxmix.engine import em
from jaxmix.engine.stream import fit_stream
from jaxmix.families import Gaussian

N, D, K = 1000, 2, 2
CHUNK = 128  # does not divide N: the last block is padded
FAMILY = Gaussian("full")
MAX_ITER = 30


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    X = np.r_[rng.normal(size=(600, D)), rng.normal(size=(400, D)) * 0.6 + 3.0]
    return X[rng.permutation(N)] + 50.0  # offset: the centred fit matters


X = make_data()
with jax.enable_x64(True):
    START = jaxmix.initialize(FAMILY, jax.random.key(0), jnp.asarray(X), K)


def in_memory(start=START, **kwargs):
    kwargs = {"max_iter": MAX_ITER, "tol": 1e-10, **kwargs}
    return jaxmix.fit(FAMILY, jnp.asarray(X), start, **kwargs)


def assert_same_fit(streamed, reference, rtol=1e-9):
    for name, a, b in zip(reference.params._fields, reference.params, streamed.params):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(
        streamed.log_likelihood, reference.log_likelihood, rtol=1e-12
    )
    np.testing.assert_array_equal(streamed.n_iter, reference.n_iter)
    np.testing.assert_array_equal(streamed.status, reference.status)
    np.testing.assert_allclose(streamed.trace, reference.trace, rtol=1e-12)


def test_array_and_memmap_sources_equal_the_in_memory_fit(tmp_path):
    reference = in_memory()
    assert_same_fit(
        fit_stream(FAMILY, X, START, max_iter=MAX_ITER, tol=1e-10, chunk_size=CHUNK),
        reference,
    )
    np.save(tmp_path / "data.npy", X)
    mapped = np.load(tmp_path / "data.npy", mmap_mode="r")
    assert_same_fit(
        fit_stream(
            FAMILY, mapped, START, max_iter=MAX_ITER, tol=1e-10, chunk_size=CHUNK
        ),
        reference,
    )
    # A .npy path is memory-mapped too.
    assert_same_fit(
        fit_stream(
            FAMILY,
            tmp_path / "data.npy",
            START,
            max_iter=MAX_ITER,
            tol=1e-10,
            chunk_size=CHUNK,
        ),
        reference,
    )


def test_list_factory_and_directory_sources_with_uneven_chunks(tmp_path):
    reference = in_memory()
    cuts = [0, 7, 300, 301, 777, N]  # chunks of 7, 293, 1, 476 and 223 rows
    chunks = [X[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    for i, chunk in enumerate(chunks):
        np.save(tmp_path / f"part{i:02d}.npy", chunk)
    for source in (chunks, lambda: iter(chunks), tmp_path, str(tmp_path)):
        result = fit_stream(
            FAMILY, source, START, max_iter=MAX_ITER, tol=1e-10, chunk_size=CHUNK
        )
        assert_same_fit(result, reference)


def test_sample_weights_from_an_array_and_from_pairs():
    weights = np.random.default_rng(1).integers(0, 4, N).astype(np.float64)
    reference = in_memory(sample_weight=jnp.asarray(weights))
    assert_same_fit(
        fit_stream(
            FAMILY,
            X,
            START,
            max_iter=MAX_ITER,
            tol=1e-10,
            sample_weight=weights,
            chunk_size=CHUNK,
        ),
        reference,
    )
    pairs = [(X[:500], weights[:500]), (X[500:], weights[500:])]
    assert_same_fit(
        fit_stream(
            FAMILY, pairs, START, max_iter=MAX_ITER, tol=1e-10, chunk_size=CHUNK
        ),
        reference,
    )


def test_restarts_share_each_pass():
    other = jaxmix.initialize(FAMILY, jax.random.key(7), jnp.asarray(X), K)
    starts = jax.tree.map(lambda *leaves: jnp.stack(leaves), START, other)
    reads = []

    def source():
        reads.append(1)
        return iter([X[:500], X[500:]])

    result = fit_stream(
        FAMILY, source, starts, max_iter=MAX_ITER, tol=1e-10, chunk_size=CHUNK
    )
    for i, start in enumerate((START, other)):
        reference = in_memory(start)
        assert_same_fit(jax.tree.map(lambda leaf, i=i: leaf[i], result), reference)
    # One pass per iteration of the slowest start, plus the checking pass; the
    # reader may have begun the pass after the last one (it reads ahead).
    n_passes = int(np.max(result.n_iter)) + 1
    assert n_passes <= len(reads) <= n_passes + 1


def test_hard_em_and_the_means_criterion():
    kmeans = jaxmix.families.IsotropicGaussian()
    start = jaxmix.initialize(kmeans, jax.random.key(2), jnp.asarray(X), 3)
    reference = jaxmix.fit(
        kmeans,
        jnp.asarray(X),
        start,
        max_iter=MAX_ITER,
        tol=0.0,
        hard=True,
        criterion="means",
    )
    streamed = fit_stream(
        kmeans,
        X,
        start,
        max_iter=MAX_ITER,
        tol=0.0,
        hard=True,
        criterion="means",
        chunk_size=CHUNK,
    )
    assert_same_fit(streamed, reference)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.ones((5, D + 1)), "chunk 1: 3 features"),
        (np.full((5, D), np.nan), "chunk 1: X contains NaN"),
        (np.ones((5, D), np.float32), "chunk 1: dtype float32"),
        (np.ones(5), "chunk 1: X must be 2-D"),
        ((np.ones((5, D)), -np.ones(5)), "chunk 1: sample_weight"),
    ],
)
def test_a_bad_chunk_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        fit_stream(FAMILY, [X[:10], bad, X[10:20]], START, max_iter=2, chunk_size=CHUNK)


def test_a_bad_file_is_named(tmp_path):
    np.save(tmp_path / "a.npy", X[:10])
    np.save(tmp_path / "b.npy", X[10:20, :1])
    with pytest.raises(ValueError, match="b.npy rows 0:10: 1 features"):
        fit_stream(FAMILY, tmp_path, START, max_iter=2, chunk_size=CHUNK)


def test_sources_that_cannot_be_read_again_are_refused():
    with pytest.raises(ValueError, match="readable on every pass"):
        fit_stream(FAMILY, (chunk for chunk in [X]), START, chunk_size=CHUNK)
    with pytest.raises(ValueError, match="cannot be streamed"):
        fit_stream(jaxmix.families.Laplace(), X, START, chunk_size=CHUNK)


def test_data_that_goes_bad_mid_fit_leaves_the_last_checkpoint_good(tmp_path):
    checkpoint = tmp_path / "fit.npz"
    calls = []

    def source():
        calls.append(1)
        if len(calls) == 4:  # the checking pass, two good passes, then bad data
            return iter([X[:500], X[500:, :1]])
        return iter([X[:500], X[500:]])

    with pytest.raises(ValueError, match="chunk 1: 1 features"):
        fit_stream(
            FAMILY,
            source,
            START,
            max_iter=MAX_ITER,
            tol=-1.0,
            chunk_size=CHUNK,
            checkpoint=checkpoint,
        )
    # The checkpoint holds the second iteration; resuming on good data ends
    # as the uninterrupted fit.
    resumed = fit_stream(
        FAMILY,
        X,
        START,
        max_iter=MAX_ITER,
        tol=-1.0,
        chunk_size=CHUNK,
        checkpoint=checkpoint,
    )
    assert_same_fit(resumed, in_memory(tol=-1.0))


def test_nan_in_a_later_pass_is_named():
    calls = []
    poisoned = X[500:].copy()
    poisoned[7, 1] = np.nan

    def source():
        calls.append(1)
        return iter([X[:500], poisoned if len(calls) == 3 else X[500:]])

    # The checking pass reads the data on the host; later passes check it
    # on the device.
    with pytest.raises(ValueError, match="chunk 1: X contains NaN"):
        fit_stream(FAMILY, source, START, max_iter=5, tol=-1.0, chunk_size=CHUNK)


def test_foreign_and_truncated_checkpoints_are_refused(tmp_path):
    checkpoint = tmp_path / "fit.npz"
    fit_stream(FAMILY, X, START, max_iter=3, chunk_size=CHUNK, checkpoint=checkpoint)
    three = jaxmix.initialize(FAMILY, jax.random.key(0), jnp.asarray(X), 3)
    with pytest.raises(ValueError, match="belongs to another fit"):
        fit_stream(
            FAMILY, X, three, max_iter=3, chunk_size=CHUNK, checkpoint=checkpoint
        )
    with pytest.raises(ValueError, match="another fit"):
        fit_stream(
            FAMILY, X[:900], START, max_iter=3, chunk_size=CHUNK, checkpoint=checkpoint
        )
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot be read"):
        fit_stream(
            FAMILY, X, START, max_iter=3, chunk_size=CHUNK, checkpoint=checkpoint
        )
    np.savez(checkpoint, something=np.ones(3))
    with pytest.raises(ValueError, match="not a jaxmix stream checkpoint"):
        fit_stream(
            FAMILY, X, START, max_iter=3, chunk_size=CHUNK, checkpoint=checkpoint
        )


def test_a_killed_fit_resumes_to_the_uninterrupted_result(tmp_path):
    np.save(tmp_path / "data.npy", X)
    checkpoint = tmp_path / "fit.npz"
    script = textwrap.dedent(
        f"""
        import time
        import jax, jax.numpy as jnp, numpy as np
        import jaxmix
        from jaxmix.engine.stream import fit_stream
        jax.config.update("jax_enable_x64", True)
        X = np.load({str(tmp_path / "data.npy")!r}, mmap_mode="r")
        family = jaxmix.families.Gaussian("full")
        start = jaxmix.initialize(family, jax.random.key(0), jnp.asarray(X), {K})

        def slow():  # a slow disk: about 0.1 s a pass
            for i in range(0, {N}, 250):
                time.sleep(0.025)
                yield X[i:i + 250]

        fit_stream(family, slow, start, max_iter={MAX_ITER}, tol=-1.0,
                   chunk_size={CHUNK}, checkpoint={str(checkpoint)!r})
        print("FINISHED")
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.05)
        time.sleep(0.3)  # a few more iterations, then kill mid-pass
        process.send_signal(signal.SIGKILL)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert "FINISHED" not in out, "the fit ended before it was killed"
    with np.load(checkpoint) as saved:
        assert saved["fingerprint"]  # a whole checkpoint, readable
    resumed = fit_stream(
        FAMILY,
        np.load(tmp_path / "data.npy", mmap_mode="r"),
        START,
        max_iter=MAX_ITER,
        tol=-1.0,
        chunk_size=CHUNK,
        checkpoint=checkpoint,
    )
    assert_same_fit(resumed, in_memory(tol=-1.0))


def test_verbose_reports_each_pass(capsys):
    fit_stream(FAMILY, X, START, max_iter=2, tol=-1.0, chunk_size=CHUNK, verbose=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["iteration 1", "iteration 2"]
    assert all("samples/s" in line for line in lines)


def test_generalized_em_families_are_refused():
    with pytest.raises(ValueError, match="closed-form M-step"):
        fit_stream(jaxmix.families.Gamma(), np.abs(X), START, chunk_size=CHUNK)


def test_status_codes_match_the_engine():
    result = fit_stream(FAMILY, X, START, max_iter=2, tol=-1.0, chunk_size=CHUNK)
    assert int(result.status) == em.MAX_ITER and not bool(result.converged)


def test_estimators_stream_data_larger_than_their_budget(tmp_path):
    np.save(tmp_path / "data.npy", X)
    mapped = np.load(tmp_path / "data.npy", mmap_mode="r")
    # A complete start (nothing initialised): the two paths run the same EM.
    given = dict(
        tol=1e-10,
        weights_init=np.array([0.5, 0.5]),
        means_init=np.array([[50.0, 50.0], [53.0, 53.0]]),
        precisions_init=np.stack([np.eye(2)] * 2),
    )
    in_memory_model = jaxmix.GaussianMixture(2, **given).fit(X)
    streamed = jaxmix.GaussianMixture(2, device_budget=X.nbytes - 1, **given)
    streamed.fit(mapped)
    np.testing.assert_allclose(streamed.means_, in_memory_model.means_, rtol=1e-9)
    np.testing.assert_allclose(
        streamed.covariances_, in_memory_model.covariances_, rtol=1e-9
    )
    assert streamed.n_iter_ == in_memory_model.n_iter_
    np.testing.assert_allclose(
        streamed.lower_bound_, in_memory_model.lower_bound_, rtol=1e-12
    )
    # Within the budget nothing changes: the in-memory path.
    same = jaxmix.GaussianMixture(2, device_budget=X.nbytes, **given).fit(mapped)
    np.testing.assert_array_equal(same.means_, in_memory_model.means_)
    # Restarts initialised on a subsample, then streamed: a converged fit
    # whose reported objective (at the last E-step) is within tol of the
    # in-memory score of its final parameters.
    restarts = jaxmix.GaussianMixture(2, n_init=2, random_state=0, device_budget=0)
    restarts.fit(mapped)
    assert restarts.converged_
    assert abs(restarts.score(X) - restarts.lower_bound_) < restarts.tol


def test_bernoulli_mixture_streams_too():
    bits = (np.random.default_rng(3).random((300, 4)) < 0.3).astype(np.float64)
    bits[:150, :2] = 1.0
    means = np.array([[0.8, 0.8, 0.3, 0.3], [0.2, 0.2, 0.4, 0.4]])
    given = dict(tol=1e-10, means_init=means, weights_init=np.array([0.5, 0.5]))
    a = jaxmix.BernoulliMixture(2, **given).fit(bits)
    b = jaxmix.BernoulliMixture(2, device_budget=0, **given)
    b.fit(bits)
    np.testing.assert_allclose(b.means_, a.means_, rtol=1e-9)
    np.testing.assert_allclose(b.weights_, a.weights_, rtol=1e-9)


def test_kmeans_streams_too(tmp_path):
    np.save(tmp_path / "data.npy", X)
    mapped = np.load(tmp_path / "data.npy", mmap_mode="r")
    init = X[[0, 500, 900]]
    a = jaxmix.KMeans(3, init=init).fit(X)
    b = jaxmix.KMeans(3, init=init, device_budget=0).fit(mapped)
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_, rtol=1e-12)
    np.testing.assert_array_equal(b.labels_, a.labels_)
    assert b.inertia_ == pytest.approx(a.inertia_, rel=1e-12)
    assert b.n_iter_ == a.n_iter_
    # Seeded on a subsample, restarts sharing each pass: a fixed point of
    # Lloyd's iteration (tol=0: until the labels stop changing) whose inertia
    # is the one of its own labels.
    c = jaxmix.KMeans(3, n_init=2, tol=0.0, random_state=0, device_budget=0)
    c.fit(mapped)
    centres = np.stack([X[c.labels_ == k].mean(axis=0) for k in range(3)])
    np.testing.assert_allclose(c.cluster_centers_, centres, rtol=1e-9)
    inertia = np.sum((X - c.cluster_centers_[c.labels_]) ** 2)
    assert c.inertia_ == pytest.approx(inertia, rel=1e-9)
