"""Time per EM iteration and peak memory: in-memory and streamed fits.

Full covariance, D=16, K=16, float32. Each (mode, N) runs in a fresh process,
so its peak resident memory (``ru_maxrss``) is its own:

- ``memory``: ``jaxmix.fit`` on the whole array on the device; the compiled
  loop already works through it in blocks of the default size (2,048 rows
  here), which keep the E-step's (rows, K, D) intermediates in cache;
- ``stream``: ``jaxmix.fit_stream`` over a memory-mapped ``.npy`` file on disk,
  65,536-row chunks; the data never is in memory as a whole.

Time per iteration is the difference of a 2-iteration and a 1-iteration fit
(after a warm-up call that compiles), so start-up, compilation and the
stream's checking pass cancel out. The data file is written once per N in
``--dir`` (5·10^7 rows take 3.2 GB) and reused. scikit-learn has no streamed
EM, so the peer here is jaxmix's own in-memory fit on the same data and start;
XLA's matrix-product speed measured in the same process is printed for scale.

Usage:
  python bench/bench_stream.py [--sizes 1000000 10000000 50000000]
      [--modes memory stream] [--dir /tmp/jaxmix-bench]
      [--memory-limit 20000000]   # largest N for the in-memory modes
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import _machine

D, K, CHUNK = 16, 16, 65536


def machine() -> list[str]:
    return [
        f"CPU: {_machine.cpu_model()}, {_machine.cpu_count()} cores, AVX-512: "
        f"{'yes' if _machine.has_avx512() else 'no'}",
        f"{_machine.versions('jax', 'python')}, load {_machine.load(1)}",
    ]


def data_file(directory: pathlib.Path, n_samples: int) -> pathlib.Path:
    """An (N, D) float32 .npy of K well-spread Gaussian clusters, written in chunks."""
    path = directory / f"gauss_{n_samples}x{D}.npy"
    if path.exists():
        return path
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(K, D)).astype(np.float32)
    out = np.lib.format.open_memmap(
        path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(n_samples, D)
    )
    for start in range(0, n_samples, 1 << 20):
        stop = min(start + (1 << 20), n_samples)
        labels = rng.integers(0, K, stop - start)
        out[start:stop] = centres[labels] + rng.normal(size=(stop - start, D))
    out.flush()
    del out
    os.replace(path.with_suffix(".tmp.npy"), path)
    return path


def matmul_ceiling() -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((2048, 2048), jnp.float32)
    product = jax.jit(lambda x: x @ x)
    product(a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        product(a).block_until_ready()
        best = min(best, time.perf_counter() - began)
    return 2 * 2048**3 / best / 1e9


def worker(mode: str, path: str) -> dict:
    """One (mode, N) in this process: seconds per iteration and peak RSS."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxmix

    mapped = np.load(path, mmap_mode="r")
    family = jaxmix.families.Gaussian("full")
    sample = jnp.asarray(mapped[:20000])
    start = jaxmix.initialize(family, jax.random.key(0), sample, K)

    if mode == "stream":

        def run(max_iter):
            return jaxmix.fit_stream(
                family, mapped, start, max_iter=max_iter, tol=-1.0, chunk_size=CHUNK
            )

    else:
        X = jnp.asarray(np.asarray(mapped))

        def run(max_iter):
            return jaxmix.fit(family, X, start, max_iter=max_iter, tol=-1.0)

    times = {}
    for max_iter in (1, 2):
        # A warm-up run per max_iter: it is static in the in-memory fit (one
        # program each), and the streamed fit's M-step holds a trace of
        # max_iter objectives (its per-chunk function compiles once). Without
        # the second warm-up, a compilation (~0.6 s) counted as iteration time.
        jax.block_until_ready(run(max_iter))
        began = time.perf_counter()
        result = jax.block_until_ready(run(max_iter))
        times[max_iter] = time.perf_counter() - began
    per_iteration = times[2] - times[1]
    return {
        "seconds_per_iteration": per_iteration,
        "ns_per_sample": per_iteration / mapped.shape[0] * 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "objective": float(result.log_likelihood),
        "gflops_ceiling": matmul_ceiling(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 50_000_000]
    )
    parser.add_argument("--modes", nargs="+", default=["memory", "stream"])
    parser.add_argument("--dir", default="/tmp/jaxmix-bench")
    parser.add_argument("--memory-limit", type=int, default=20_000_000)
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "PATH"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    print("\n".join(machine()))
    steal = _machine.Steal().start()
    print(f"full covariance, D={D}, K={K}, float32, chunks of {CHUNK} rows")
    print("| N | mode | s / iteration | ns / sample | peak RSS MB | objective |")
    print("|---:|---|---:|---:|---:|---:|")
    rows = {}
    for n_samples in args.sizes:
        path = data_file(pathlib.Path(args.dir), n_samples)
        size_mb = path.stat().st_size / 2**20
        for mode in args.modes:
            if mode != "stream" and n_samples > args.memory_limit:
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--worker", mode, str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows[(n_samples, mode)] = row
            print(
                f"| {n_samples:,} | {mode} | {row['seconds_per_iteration']:.3f} | "
                f"{row['ns_per_sample']:.1f} | {row['peak_rss_mb']:,.0f} | "
                f"{row['objective']:.6f} |",
                flush=True,
            )
        print(f"(data file {size_mb:,.0f} MB)")
    for (n_samples, mode), row in rows.items():
        if mode == "stream" and (n_samples, "memory") in rows:
            ratio = row["ns_per_sample"] / rows[(n_samples, "memory")]["ns_per_sample"]
            print(f"N={n_samples:,}: streamed / in-memory time per sample {ratio:.2f}")
    steal.stop()
    ceilings = [row["gflops_ceiling"] for row in rows.values()]
    if ceilings:
        print(f"XLA float32 matrix product: {max(ceilings):.0f} GFLOP/s")
    print(steal.line())


if __name__ == "__main__":
    main()
