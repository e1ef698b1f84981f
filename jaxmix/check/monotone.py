"""The monotonicity check of an EM objective trace."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

Array = jax.Array


# --------------------------------------------------------------------------
# Monotonicity
# --------------------------------------------------------------------------


class MonotoneReport(NamedTuple):
    """Outcome of :func:`check_monotone`."""

    ok: bool
    largest_decrease: float  # max over steps of trace[i] − trace[i+1] (0 if none)
    iteration: int  # i where the largest decrease (or the problem) happens; −1 if none
    n_iter: int  # entries checked (the longest run before the NaN padding)
    message: str

    def __str__(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        text = (
            f"monotonicity {verdict}: {self.n_iter} iterations, largest decrease "
            f"{self.largest_decrease:.2e}"
        )
        if self.iteration >= 0:
            text += f" (iteration {self.iteration} → {self.iteration + 1})"
        if self.message:
            text += f": {self.message}"
        return text


def check_monotone(trace, *, rtol: float | None = None) -> MonotoneReport:
    r"""Check that an EM objective trace never decreases beyond round-off.

    EM increases the (MAP) objective at every iteration. ``trace`` is
    :attr:`jaxmix.FitResult.trace` (or the FitResult itself), NaN-padded past
    ``n_iter``; a batch of traces (leading axes, e.g. from ``jax.vmap``) is
    checked row by row. A step from t_i to t_{i+1} fails when
    ``t_i − t_{i+1} > rtol · max(1, |t_i|, |t_{i+1}|)``.

    Args:
      trace: objective per iteration, shape (..., max_iter), or a FitResult.
      rtol: relative round-off allowance; default 100 machine epsilons of the
        trace's dtype.

    Returns:
      A :class:`MonotoneReport` (for a batch, the worst row's).

    Examples:
      >>> import jaxmix.check
      >>> jaxmix.check.check_monotone([-3.0, -2.0, -1.5, float("nan")]).ok
      True
    """
    if isinstance(trace, tuple) and hasattr(trace, "trace"):
        trace = trace.trace  # a FitResult
    trace = np.asarray(trace)
    if not np.issubdtype(trace.dtype, np.floating):
        trace = trace.astype(np.float64)
    if trace.ndim == 0:
        raise ValueError("trace must have at least one dimension (iterations)")
    if rtol is None:
        rtol = 100 * float(np.finfo(trace.dtype).eps)
    rows = trace.reshape(-1, trace.shape[-1]).astype(np.float64)
    reports = [_check_monotone_row(row, rtol) for row in rows]
    failed = [r for r in reports if not r.ok]
    if failed:
        return max(failed, key=lambda r: r.largest_decrease)
    return max(reports, key=lambda r: r.largest_decrease)


def _check_monotone_row(row: np.ndarray, rtol: float) -> MonotoneReport:
    nan = np.isnan(row)
    n_iter = int(np.argmax(nan)) if nan.any() else row.shape[0]
    if not nan[n_iter:].all():
        return MonotoneReport(
            False,
            np.nan,
            n_iter,
            n_iter,
            f"NaN at iteration {n_iter} followed by numbers",
        )
    values = row[:n_iter]
    infinite = ~np.isfinite(values)
    if infinite.any():
        where = int(np.argmax(infinite))
        return MonotoneReport(
            False,
            np.nan,
            where,
            n_iter,
            f"the objective is infinite at iteration {where}",
        )
    if n_iter < 2:
        return MonotoneReport(True, 0.0, -1, n_iter, "")
    decrease = values[:-1] - values[1:]
    allowance = rtol * np.maximum(
        1.0, np.maximum(np.abs(values[:-1]), np.abs(values[1:]))
    )
    worst = int(np.argmax(decrease - allowance))
    largest = float(max(decrease.max(), 0.0))
    if decrease[worst] > allowance[worst]:
        return MonotoneReport(
            False,
            largest,
            worst,
            n_iter,
            f"the objective decreases by {decrease[worst]:.2e} "
            f"(allowance {allowance[worst]:.1e})",
        )
    iteration = int(np.argmax(decrease)) if largest > 0 else -1
    return MonotoneReport(True, largest, iteration, n_iter, "")
