"""First-call time of ``jaxmix.initialize`` at large N, one fresh process each.

A user's first call pays for tracing and compiling as well as for the run, so
this bench times the first call of ``jaxmix.initialize(Gaussian("full"), key,
X, 6, method=m)`` for the four initialisation methods on float64 data of shape
(N, 8) (under ``jax.enable_x64(True)``), each configuration in a fresh Python
process (no compilation cache in memory, the persistent cache off). The second
call in the same process is timed too: it is the run alone, so the difference
is (mostly) tracing and compilation. The first call's CPU time (all threads
of the process) is reported beside its wall-clock time: other processes on a
shared machine inflate it less. The bench also counts the lines of XLA's
slow-operation alarm ("Constant folding an instruction is taking > 1s") that
the process wrote to stderr.

Each configuration is repeated and the fastest repeat is reported, with the
load average (this machine is shared: other processes slow compilation down).
To compare two versions of the package, give each checkout with ``--checkout
LABEL=PATH``: its processes run with ``PYTHONPATH=PATH`` and the checkouts
alternate within each repeat, so a change of load affects them alike.

Usage:
  python bench/bench_init_compile.py [--sizes 200000 2000000] [--repeats 3]
      [--methods kmeans ...] [--checkout before=/path/a --checkout after=/path/b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _machine

METHODS = ("kmeans", "k-means++", "random", "random_from_data")
ALARM_MARKERS = ("slow_operation_alarm", "Constant folding")


def machine() -> list[str]:
    """Lines describing the CPU (model, cores, AVX-512) and the software."""
    avx512 = _machine.avx512_flags()
    return [
        f"CPU: {_machine.cpu_model()}, {_machine.cpu_count()} cores; AVX-512: "
        + (f"yes ({' '.join(avx512)})" if avx512 else "no"),
        _machine.versions("python", "jax", "numpy"),
    ]


def child(n_samples: int, method: str) -> None:
    """One configuration in this (fresh) process: print the timings as JSON."""
    import jax
    import numpy as np

    jax.config.update("jax_enable_compilation_cache", False)
    rng = np.random.default_rng(0)
    # Six well separated blobs, so that Lloyd's iterations (method "kmeans")
    # stop after a few passes and the run stays small next to compilation.
    centers = 4.0 * rng.normal(size=(6, 8))
    X = centers[rng.integers(6, size=n_samples)] + rng.normal(size=(n_samples, 8))

    import jaxmix
    from jaxmix.families import Gaussian

    with jax.enable_x64(True):
        data = jax.block_until_ready(jax.numpy.asarray(X))
        key = jax.random.key(0)
        times, cpu_times = [], []
        for _ in range(2):
            cpu, begin = _machine.cpu_seconds(), time.perf_counter()
            params = jaxmix.initialize(Gaussian("full"), key, data, 6, method=method)
            jax.block_until_ready(params)
            times.append(time.perf_counter() - begin)
            cpu_times.append(_machine.cpu_seconds() - cpu)
    result = {"first": times[0], "first_cpu": cpu_times[0], "second": times[1]}
    print(json.dumps({**result, "jaxmix": jaxmix.__file__}))


def run_one(n_samples, method, pythonpath, timeout):
    """Timings of one configuration in a fresh process, and its alarm lines."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, __file__, "--child", str(n_samples), method]
    out = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["alarms"] = sum(
        any(marker in line for marker in ALARM_MARKERS)
        for line in out.stderr.splitlines()
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--checkout",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a version of the package to time (PYTHONPATH=PATH); repeatable",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    checkouts = [tuple(c.split("=", 1)) for c in args.checkout] or [("current", "")]

    for line in machine():
        print(line)
    print(f"load average before: {_machine.load(1)}")
    steal = _machine.Steal().start()
    results = {}
    for repeat in range(args.repeats):
        for n_samples in args.sizes:
            for method in args.methods:
                for label, path in checkouts:
                    out = run_one(n_samples, method, path, args.timeout)
                    results.setdefault((n_samples, method, label), []).append(out)
                    print(
                        f"  repeat {repeat + 1}: N={n_samples} {method:16s} "
                        f"{label:8s} first {out['first']:6.2f} s (CPU "
                        f"{out['first_cpu']:6.2f} s), second "
                        f"{out['second']:6.2f} s, {out['alarms']} alarm lines "
                        f"(load {_machine.load(1)}) [{out['jaxmix']}]",
                        flush=True,
                    )
    steal.stop()
    print(f"load average after: {_machine.load(1)}")
    print(steal.line())
    print()
    header = "| N | method | " + " | ".join(
        f"{label}: first call (s) | {label}: first call, CPU (s) | "
        f"{label}: second call (s) | {label}: alarm lines"
        for label, _ in checkouts
    )
    print(header + " |")
    print("|---:|---|" + "---:|---:|---:|---:|" * len(checkouts))
    for n_samples in args.sizes:
        for method in args.methods:
            cells = []
            for label, _ in checkouts:
                runs = results[(n_samples, method, label)]
                cells += [
                    f"{min(r['first'] for r in runs):.2f}",
                    f"{min(r['first_cpu'] for r in runs):.2f}",
                    f"{min(r['second'] for r in runs):.2f}",
                    str(max(r["alarms"] for r in runs)),
                ]
            print(f"| {n_samples:,} | `{method}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
