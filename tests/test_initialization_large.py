"""Initialisation compiles no data-sized constants, whatever N.

XLA evaluates operations on constants at compile time. Equal sampling
probabilities built inside a compiled program are an (N,) constant, and their
cumulative sum (in ``jax.random.choice``) was folded by the compiler: seconds of
compilation at N = 200,000 and XLA's slow-operation alarm on the user's
terminal. Without sample weights the seeding now draws uniformly in closed form;
these tests check the alarm, the compiled programs and that the draws are those
of ``jax.random.choice`` with equal probabilities.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmix
from jaxmix.engine import initialization
from jaxmix.families import Gaussian

N, D, K = 4096, 2, 3
N_LARGE = 200_000
ALARM_MARKERS = ("slow_operation_alarm", "Constant folding")
_CONSTANT = re.compile(r"\b[a-z]+\d*\[([\d,]*)\]\{[^}]*\} constant\(")


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(K, D))
    return centres[rng.integers(K, size=N)] + rng.normal(size=(N, D))


def _largest_constant(hlo_text: str) -> int:
    """Number of elements of the largest array constant in an HLO module."""
    sizes = [
        int(np.prod([int(d) for d in dims.split(",") if d]))
        for dims in _CONSTANT.findall(hlo_text)
    ]
    return max(sizes, default=0)


def test_large_fits_raise_no_slow_operation_alarm():
    """GaussianMixture at N = 200,000 with every init: nothing from XLA on stderr.

    A fresh process (no compiled program in memory, the persistent cache off),
    float64 data as a user passes it; two EM iterations, since only the
    compilation matters here.
    """
    script = textwrap.dedent(
        f"""
        import numpy as np
        import jaxmix
        rng = np.random.default_rng(0)
        X = rng.normal(size=({N_LARGE}, 2))
        X[::2] += 6.0
        for method in {initialization.INIT_METHODS!r}:
            model = jaxmix.GaussianMixture(2, init_params=method, max_iter=2)
            model.fit(X)
            assert np.all(np.isfinite(model.means_)), method
        print("fitted", {len(initialization.INIT_METHODS)})
        """
    )
    root = str(pathlib.Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, JAX_ENABLE_COMPILATION_CACHE="false")
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"fitted {len(initialization.INIT_METHODS)}" in out.stdout
    alarms = [
        line
        for line in out.stderr.splitlines()
        if any(marker in line for marker in ALARM_MARKERS)
    ]
    assert not alarms, "\n".join(alarms)


@pytest.mark.parametrize("method", initialization.INIT_METHODS)
def test_compiled_initialization_holds_no_data_sized_constant(method):
    """The compiled program has no constant with as many elements as samples.

    The alarm above depends on the machine's speed (it fires after a second of
    folding); a folded (N,) array stays in the optimised program at any N.
    """
    X = jax.ShapeDtypeStruct((N, D), jnp.float32)

    def initialize(key, X):
        return jaxmix.initialize(Gaussian("full"), key, X, K, method=method)

    compiled = jax.jit(initialize).lower(jax.random.key(0), X).compile()
    assert _largest_constant(compiled.as_text()) < N


def test_constant_detector_finds_folded_equal_probabilities():
    """The detector sees what equal probabilities built in the program leave.

    Sampling ∝ a constant (N,) array, as the seeding did without weights: XLA
    folds the normalised probabilities and their cumulative sum into an (N,)
    constant.
    """

    def draw(key):
        return initialization._sample_index(key, jnp.ones((N,)), (K,))

    compiled = jax.jit(draw).lower(jax.random.key(0)).compile()
    assert _largest_constant(compiled.as_text()) >= N


def test_uniform_draws_match_choice_with_equal_probabilities(x64):
    """Closed-form uniform indices = ``jax.random.choice`` with p = 1/N."""
    keys = jax.random.split(jax.random.key(3), 200)
    probabilities = jnp.full((N,), 1.0 / N)
    expected = jax.vmap(
        lambda key, p: jax.random.choice(key, N, (5,), p=p), in_axes=(0, None)
    )(keys, probabilities)
    drawn = jax.vmap(
        lambda key: initialization._uniform_index(key, N, (5,), jnp.float64)
    )(keys)
    np.testing.assert_array_equal(drawn, expected)
    assert drawn.dtype == expected.dtype


def test_unweighted_seeding_matches_equal_weights(x64):
    """No weights seeds the same samples as equal weights given as an array.

    With weights, k-means++ and ``random_from_data`` draw through
    ``jax.random.choice`` with probabilities (unchanged); without, the first
    k-means++ seed is drawn in closed form and ``random_from_data`` draws a
    permutation, so equal weights may pick other samples there: only k-means++
    is compared.
    """
    X = jnp.asarray(_data())
    keys = jax.random.split(jax.random.key(5), 20)

    @jax.jit
    def seeds(keys, weights):
        def one(key, weights):
            return initialization.kmeans_plusplus(key, X, K, weights)[1]

        if weights is None:
            return jax.vmap(lambda key: one(key, None))(keys)
        return jax.vmap(one, in_axes=(0, None))(keys, weights)

    unweighted = seeds(keys, None)
    weighted = seeds(keys, jnp.ones((N,)))
    np.testing.assert_array_equal(unweighted, weighted)
    # not a constant draw: the seeds differ from key to key
    assert len({tuple(row) for row in np.asarray(unweighted)}) > 10
