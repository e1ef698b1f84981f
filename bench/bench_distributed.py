"""One fit, one or two processes: the cost of spreading EM over ``jax.distributed``.

Times ``jaxmix.fit`` of a full-covariance Gaussian mixture (N=200,000, D=16,
K=16, float32, exactly ``--iterations`` EM iterations: ``tol=-1``) on the same
data and from the same start in three layouts, each in fresh processes:

- ``1 process``: the whole data on one device, the plain ``jaxmix.fit`` call;
- ``1 process, 2 devices``: the data sharded over two local CPU devices
  (``--xla_force_host_platform_device_count=2``) by ``shard_samples``;
- ``2 processes``: two processes on 127.0.0.1, one CPU device each, each
  holding half of the rows, joined by ``jax.distributed`` with gloo
  collectives.

Each layout runs one fit first (compilation and warm-up), then ``--repeats``
timed fits, each ended by ``block_until_ready``; the fastest is reported. In
the two-process layout both processes start each timed fit together (a
barrier), and the time is the slower process's. On a 2-core machine the two
processes (or devices) compete for the same two cores that one process's
thread pool already uses, so this measures the overhead of the collectives and
of the split, not a speed-up.

Usage:
  python bench/bench_distributed.py [--samples 200000] [--iterations 10]
      [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import _machine

D, K, SEED = 16, 16, 0


def _data(n_samples: int):
    """K well separated clusters in D dimensions, float32."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    centres = rng.normal(scale=5.0, size=(K, D))
    labels = rng.integers(K, size=n_samples)
    return (centres[labels] + rng.normal(size=(n_samples, D))).astype(np.float32)


def _start(X):
    """The same start in every layout: the first K rows, unit covariances."""
    import jax.numpy as jnp

    from jaxmix.families import GaussianParams

    return GaussianParams(
        jnp.full((K,), 1.0 / K, jnp.float32),
        jnp.asarray(X[:K]),
        jnp.broadcast_to(jnp.eye(D, dtype=jnp.float32), (K, D, D)),
    )


def child(layout: str, args, process_id: int = 0, port: int = 0) -> None:
    """One layout in this process: print the fit times as JSON."""
    import jax

    if layout.startswith("two_processes"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=2,
            process_id=process_id,
            initialization_timeout=120,
        )
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils

    import jaxmix
    from jaxmix.engine import distributed

    X = _data(args.samples)
    start = _start(X)
    family = jaxmix.families.Gaussian("full")
    if layout == "one_process":
        data_X, weights, chunk_size = jnp.asarray(X), None, None
    else:
        two = layout.startswith("two_processes")
        rows = np.array_split(X, 2)[process_id] if two else X
        one_block = layout.endswith("_one_block")
        data = distributed.shard_samples(rows, n_components=None if one_block else K)
        data_X, weights, chunk_size = data.X, data.sample_weight, data.chunk_size

    def run():
        return jaxmix.fit(
            family,
            data_X,
            start,
            max_iter=args.iterations,
            tol=-1.0,
            sample_weight=weights,
            chunk_size=chunk_size,
        )

    jax.block_until_ready(run())  # compilation and warm-up
    times = []
    for _ in range(args.repeats):
        if layout.startswith("two_processes"):
            multihost_utils.sync_global_devices("fit")
        begin = time.perf_counter()
        result = jax.block_until_ready(run())
        times.append(time.perf_counter() - begin)
    print(
        json.dumps(
            {
                "seconds": min(times),
                "n_iter": int(result.n_iter),
                "log_likelihood": float(result.log_likelihood),
                "devices": jax.device_count(),
                "padded_samples": int(data_X.shape[0]),
            }
        )
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(layout: str, args) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    if layout.startswith("two_devices"):
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    common = [
        sys.executable,
        __file__,
        "--samples",
        str(args.samples),
        "--iterations",
        str(args.iterations),
        "--repeats",
        str(args.repeats),
        "--child",
        layout,
    ]
    n_processes = 2 if layout.startswith("two_processes") else 1
    port = _free_port()
    processes = [
        subprocess.Popen(
            [*common, "--process-id", str(i), "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n_processes)
    ]
    outputs = []
    try:
        outputs = [p.communicate(timeout=args.timeout) for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        outputs = [p.communicate() for p in processes]
    results = []
    for p, (out, err) in zip(processes, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"{layout} failed (exit {p.returncode}):\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--layouts", nargs="*", default=None)
    parser.add_argument("--child", default=None)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        child(args.child, args, args.process_id, args.port)
        return

    print(
        f"CPU: {_machine.cpu_model()}, {_machine.cpu_count()} cores; "
        f"{_machine.versions('jax')}"
    )
    print(
        f"full covariance, N={args.samples}, D={D}, K={K}, float32, "
        f"{args.iterations} EM iterations; fastest of {args.repeats} after warm-up"
    )
    print(f"load average before: {_machine.load(1)}")
    steal = _machine.Steal().start()
    layouts = {
        "one_process": "1 process, 1 device",
        "two_devices": "1 process, 2 devices",
        "two_processes": "2 processes, 1 device each (gloo)",
        "two_devices_one_block": "1 process, 2 devices, one block each",
        "two_processes_one_block": "2 processes, one block each (gloo)",
    }
    if args.layouts:
        layouts = {k: v for k, v in layouts.items() if k in args.layouts}
    baseline = None
    for layout, label in layouts.items():
        results = _launch(layout, args)
        seconds = max(r["seconds"] for r in results)
        baseline = baseline or seconds
        first = results[0]
        print(
            f"{label:36s} {seconds:8.3f} s  "
            f"{1e3 * seconds / first['n_iter']:8.1f} ms/iter  "
            f"x{seconds / baseline:.2f}  "
            f"(N padded {first['padded_samples']}, "
            f"objective {first['log_likelihood']:.6f})"
        )
    steal.stop()
    print(steal.line())


if __name__ == "__main__":
    main()
