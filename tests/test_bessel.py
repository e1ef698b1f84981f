"""Modified Bessel functions of the first kind against scipy and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from jaxmix.families.bessel import bessel_ratio, log_bessel_iv, log_bessel_ive

# The grid of the accuracy claim: orders 0 … 500 (fractional ones too, and
# both sides of the method's switch at order 20), arguments 1e-8 … 1e5, plus
# both sides of the switch between the power series and the asymptotic
# expansion at x = 2√(ν + 1).
ORDERS = np.unique(
    np.concatenate(
        [
            np.linspace(0, 5, 21),
            np.linspace(5, 50, 46),
            np.linspace(50, 500, 46),
            [0.3, 7.7, 19.5, 19.99, 20.01, 123.4, 282.5],
        ]
    )
)
ARGUMENTS = np.logspace(-8, 5, 300)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


@jax.jit
def evaluate(nu, x):
    """(log ive, ratio), one compiled program per shape (op by op is slow)."""
    return log_bessel_ive(nu, x), bessel_ratio(nu, x)


@pytest.fixture(scope="module")
def grid():
    """Orders, arguments and our (log ive, ratio) on the grid, in one program."""
    switch = 2 * np.sqrt(ORDERS + 1)
    x = np.concatenate(
        [
            np.broadcast_to(ARGUMENTS, (ORDERS.size, ARGUMENTS.size)),
            np.stack([switch, switch * (1 + 1e-12), switch * (1 - 1e-12)], axis=1),
        ],
        axis=1,
    )
    nu = np.broadcast_to(ORDERS[:, None], x.shape)
    return nu, x, *map(np.asarray, evaluate(nu, x))


def _representable(nu, x):
    """scipy's ive of orders ν and ν + 1, where both are normal floats."""
    with np.errstate(all="ignore"):
        below, above = special.ive(nu, x), special.ive(nu + 1, x)
    ok = (below > 1e-300) & (above > 1e-300)
    return below, above, ok


def test_log_ive_matches_scipy(grid):
    nu, x, log_ive, _ = grid
    reference, _, ok = _representable(nu, x)
    assert ok.mean() > 0.6
    # |Δ log I| is the relative error of I (and of ive). Measured: 5.7e-13, at
    # large orders where the logarithm is ~ 1e3 and one unit in its last
    # place is 1e-13 (jax's gammaln adds a few of them).
    error = np.abs(log_ive[ok] - np.log(reference[ok]))
    assert error.max() < 2e-12


def test_log_iv_below_the_float_range_matches_the_series(grid):
    """Where I_ν(x) underflows, against scipy's ₀F₁ form of the series.

    :math:`I_ν(x) = (x/2)^ν / Γ(ν+1) · ₀F₁(; ν+1; x²/4)`, and ₀F₁ is moderate
    there (x² / 4 is small against ν + 1).
    """
    nu, x, log_ive, _ = grid
    _, _, ok = _representable(nu, x)
    tiny = ~ok
    nu, x = nu[tiny], x[tiny]
    reference = (
        nu * np.log(x / 2)
        - special.gammaln(nu + 1)
        + np.log(special.hyp0f1(nu + 1, x**2 / 4))
    )
    ours = log_ive[tiny] + x
    # Logarithms of size ~ 1e4: relative error a few units in the last place.
    np.testing.assert_allclose(ours, reference, rtol=2e-14)


def test_ratio_matches_scipy(grid):
    nu, x, _, ratio = grid
    below, above, ok = _representable(nu, x)
    # Measured 6.5e-13, which is scipy's: its two ive values each carry a few
    # 1e-13 at large orders (checked against 45-digit series sums).
    np.testing.assert_allclose(ratio[ok], above[ok] / below[ok], rtol=2e-12)
    assert np.all((ratio >= 0) & (ratio <= 1))


def test_order_one_half_in_closed_form():
    r"""I_{1/2}(x) = √(2/(πx)) sinh x: a reference far beyond scipy's range.

    log ive = ½ log(2/(πx)) + log((1 − e^{−2x}) / 2) and r = coth x − 1/x.
    """
    x = np.logspace(-6, 300, 400)
    log_ive, ratio = map(np.asarray, evaluate(np.full_like(x, 0.5), x))
    reference = 0.5 * np.log(2 / (np.pi * x)) + np.log(-np.expm1(-2 * x) / 2)
    np.testing.assert_allclose(log_ive, reference, rtol=1e-14, atol=1e-14)
    # coth x − 1/x cancels at small x: its Taylor series there instead.
    small, large = x < 1e-2, x >= 1
    z = x[small]
    series = z / 3 - z**3 / 45 + 2 * z**5 / 945 - z**7 / 4725
    np.testing.assert_allclose(ratio[small], series, rtol=1e-14)
    closed = 1 / np.tanh(x[large]) - 1 / x[large]
    np.testing.assert_allclose(ratio[large], closed, rtol=1e-14)


def test_log_iv_and_special_values():
    log_iv = jax.jit(log_bessel_iv)(2.5, 1000.0)
    assert float(log_iv) == pytest.approx(
        np.log(special.ive(2.5, 1000.0)) + 1000.0, rel=1e-15
    )
    log_ive, ratio = evaluate(np.array([0.0, 1.5, 3.0]), np.zeros(3))
    assert log_ive[0] == 0.0  # I_0(0) = 1
    assert log_ive[1] == -np.inf  # I_ν(0) = 0 for ν > 0
    np.testing.assert_array_equal(ratio, 0.0)
    integers = jax.eval_shape(log_bessel_ive, 1, jnp.arange(1, 4))
    assert integers.dtype == jnp.float64


def test_derivatives():
    r"""d/dx log I_ν(x) = I'_ν / I_ν and the ratio's derivative, against scipy.

    :math:`I'_ν = (I_{ν−1} + I_{ν+1}) / 2`, from scipy's ive (no overflow);
    the ratio's derivative against central differences of scipy's ratio.
    """
    nu = np.array([0.0, 0.5, 1.0, 4.5, 30.0, 200.0])
    x = np.array([1e-3, 0.7, 3.0, 25.0, 150.0, 2000.0])
    grad_log = jax.jit(jax.vmap(jax.grad(log_bessel_iv, argnums=1)))(nu, x)
    expected = (special.ive(nu - 1, x) + special.ive(nu + 1, x)) / (
        2 * special.ive(nu, x)
    )
    np.testing.assert_allclose(grad_log, expected, rtol=1e-11)
    grad_ratio = jax.jit(jax.vmap(jax.grad(bessel_ratio, argnums=1)))(nu, x)

    def ratio(z):
        return special.ive(nu + 1, z) / special.ive(nu, z)

    h = 1e-5 * x
    numeric = (ratio(x + h) - ratio(x - h)) / (2 * h)
    np.testing.assert_allclose(grad_ratio, numeric, rtol=1e-6)
    # At x = 0: d/dx log ive_0 = −1, r'_ν(0) = 1 / (2(ν + 1)).
    at_zero = jax.jit(jax.grad(lambda x: log_bessel_ive(0.0, x) + bessel_ratio(1.5, x)))
    assert float(at_zero(0.0)) == pytest.approx(-1.0 + 0.2)


def test_no_derivative_in_the_order():
    with pytest.raises(TypeError, match="order"):
        jax.grad(log_bessel_ive)(1.5, 2.0)
    with pytest.raises(TypeError, match="order"):
        jax.grad(bessel_ratio)(1.5, 2.0)


def test_float32_is_finite_and_close():
    """float32 over every float32 argument: finite, ratio in [0, 1], and close.

    Tolerance: the asymptotic branch forms log I_ν from logarithms of size up
    to a few tens at small ν (orders lifted to 20), or ~ν at large ν, so its
    error is a few float32 units of those: up to ~1e-5 absolute; the ratio
    carries the same error through the difference of two such logarithms.
    """
    with jax.enable_x64(False):
        nu = ORDERS.astype(np.float32)[:, None]
        x = np.concatenate([[0.0], np.logspace(-37, 38, 300)]).astype(np.float32)
        log_ive, ratio = evaluate(*np.broadcast_arrays(nu, x))
    log_ive, ratio = np.asarray(log_ive), np.asarray(ratio)
    assert log_ive.dtype == np.float32
    assert not np.isnan(log_ive).any() and not np.isposinf(log_ive).any()
    assert np.all((ratio >= 0) & (ratio <= 1))
    nu64, x64 = np.broadcast_arrays(ORDERS[:, None], x.astype(np.float64))
    below, above, ok = _representable(nu64, x64)
    ok &= (x64 >= 1e-8) & (x64 <= 1e5)
    reference = np.log(below[ok])
    error = np.abs(log_ive[ok] - reference) / np.maximum(1.0, np.abs(reference))
    assert error.max() < 5e-5  # measured 9e-6
    np.testing.assert_allclose(ratio[ok], above[ok] / below[ok], rtol=1e-4)


def test_float32_stays_float32_with_x64_enabled():
    """float32 arguments keep their dtype when JAX's float64 is on.

    The asymptotic expansion's coefficients once entered as NumPy float64
    scalars, which promoted the expansion to float64 and made the recurrence's
    loop fail on mismatched carry types (a von Mises–Fisher fit of float32
    data under ``jax.enable_x64`` raised a TypeError).
    """
    nu = np.array([0.0, 0.5, 4.0, 24.0], dtype=np.float32)[:, None]
    x = np.array([0.1, 3.0, 50.0, 500.0], dtype=np.float32)
    nu, x = np.broadcast_arrays(nu, x)
    log_ive, ratio = evaluate(nu, x)  # x64 is on (the module's fixture)
    slope = jax.vmap(jax.grad(log_bessel_ive, argnums=1))(nu.ravel(), x.ravel())
    assert log_ive.dtype == ratio.dtype == slope.dtype == np.float32
    with jax.enable_x64(False):
        expected = evaluate(nu, x)
    np.testing.assert_array_equal(log_ive, expected[0])
    np.testing.assert_array_equal(ratio, expected[1])
