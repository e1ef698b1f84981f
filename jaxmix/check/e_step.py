"""The E-step checks: responsibilities by autodiff, and Fisher's identity."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.check import common
from jaxmix.families import charts

Array = jax.Array


@jax.jit
def _fisher_gradients(family, X, resp, params):
    """∇ log p(X|θ) and ∇Q(θ|θ_old) (from ``resp``) at θ = params, in coordinates."""
    scale = charts.data_scale(X)
    coords = charts.to_unconstrained(family, params, scale)
    score = jax.grad(common.log_likelihood, argnums=2)(family, X, coords, params, scale)
    # With missing values, Q(θ | θ_old) takes the missing entries' expectations
    # under θ_old = params, held fixed while θ moves.
    gradient = jax.grad(common.expected_complete_log_likelihood, argnums=3)(
        family, X, resp, coords, params, scale, None, params
    )
    return score, gradient


@jax.jit
def _responsibilities_by_autodiff(log_prob: Array) -> Array:
    """∂/∂ℓ_nk of Σ_n logsumexp_k ℓ_nk: the posterior over components."""
    return jax.grad(lambda lp: jnp.sum(jax.nn.logsumexp(lp, axis=1)))(log_prob)


# --------------------------------------------------------------------------
# E-step check
# --------------------------------------------------------------------------


class EStepReport(NamedTuple):
    """Outcome of :func:`check_e_step`."""

    ok: bool
    max_error: float  # max |r_nk − ∂ log p(X) / ∂ℓ_nk|
    row_sum_error: float  # max |Σ_k r_nk − 1|
    min_resp: float  # smallest responsibility (must be >= 0)
    worst_sample: int  # sample with the largest error
    atol: float

    def __str__(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        return (
            f"E-step check {verdict} (tolerance {self.atol:.0e}):\n"
            f"  max |r_nk − ∂ log p(X)/∂(log π_k + log p(x_n|θ_k))| = "
            f"{self.max_error:.2e} (worst sample {self.worst_sample})\n"
            f"  max |Σ_k r_nk − 1| = {self.row_sum_error:.2e}\n"
            f"  min r_nk = {self.min_resp:.2e}"
        )


def _given_responsibilities(family, params, X, e_step) -> np.ndarray:
    """The E-step's responsibilities as float64 NumPy: the user's or the family's.

    A user's ``e_step(params, X)`` is called with NumPy arrays and may return
    ``resp`` or a tuple whose first item is ``resp``.
    """
    if e_step is None:
        resp = common.e_step_jit(family, params, X)[0]
    else:
        resp = e_step(jax.tree.map(np.array, params), np.array(X))
        if isinstance(resp, tuple):
            resp = resp[0]
    return np.asarray(resp, dtype=np.float64)


def check_e_step(
    family, params, X, e_step: Callable | None = None, *, atol: float = 1e-10
) -> EStepReport:
    r"""Check responsibilities against autodiff of the log-likelihood, in float64.

    The posterior over components is the gradient of the log-likelihood with
    respect to each component's log joint density ℓ_nk = log π_k + log p(x_n|θ_k):

    .. math::
        r_{nk} = \frac{∂}{∂ℓ_{nk}} Σ_n \log Σ_j e^{ℓ_{nj}},

    so rows are non-negative and sum to one.

    Args:
      family: the model family (supplies ℓ_nk).
      params: the family's params.
      X: data, shape (N, D).
      e_step: ``e_step(params, X) -> resp`` (or a tuple whose first item is resp),
        called with float64 NumPy arrays; None checks :func:`jaxmix.e_step`.
      atol: tolerance on every entry and row sum.

    Returns:
      An :class:`EStepReport`.

    Examples:
      >>> import jax, numpy as np, jaxmix
      >>> X = np.random.default_rng(0).normal(size=(50, 2))
      >>> family = jaxmix.families.Gaussian("full")
      >>> params = jaxmix.initialize(family, jax.random.key(0), X, 2)
      >>> jaxmix.check.check_e_step(family, params, X).ok
      True
    """
    with jax.enable_x64(True):
        X = common.as_data(X, allow_nan=family.missing_values)
        family.check_data(np.asarray(X))
        params = common.as_float64(params)
        expected = np.asarray(
            _responsibilities_by_autodiff(common.log_joint_jit(family, params, X))
        )
        resp = _given_responsibilities(family, params, X, e_step)
        if resp.shape != expected.shape:
            raise ValueError(
                f"the E-step returned responsibilities of shape {resp.shape}, "
                f"expected {expected.shape}"
            )
        error = np.abs(resp - expected)
        error = np.where(np.isfinite(error), error, np.inf)
        row_sum_error = np.abs(resp.sum(axis=1) - 1.0)
        row_sum_error = np.where(np.isfinite(row_sum_error), row_sum_error, np.inf)
        max_error = float(error.max())
        min_resp = float(np.nanmin(resp)) if np.any(np.isfinite(resp)) else np.nan
        ok = max_error <= atol and float(row_sum_error.max()) <= atol and min_resp >= 0
        return EStepReport(
            ok=bool(ok),
            max_error=max_error,
            row_sum_error=float(row_sum_error.max()),
            min_resp=min_resp,
            worst_sample=int(np.argmax(error.max(axis=1))),
            atol=atol,
        )


# --------------------------------------------------------------------------
# Fisher's identity
# --------------------------------------------------------------------------


class FisherReport(NamedTuple):
    """Outcome of :func:`check_fisher_identity`."""

    ok: bool
    gaps: dict[str, float]  # per free field: ‖∇ log p(X) − ∇Q‖ / N
    gradient_norms: dict[str, float]  # per free field: ‖∇ log p(X)‖ / N
    rtol: float

    def __str__(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        lines = [
            f"Fisher's identity {verdict}: ∇ log p(X|θ) = ∇_θ Q(θ|θ_old) at θ = θ_old "
            f"(tolerance {self.rtol:.0e} on the gap / N)"
        ]
        width = max((len(name) for name in self.gaps), default=0)
        for name, gap in self.gaps.items():
            label = "ok" if gap <= self.rtol else "FAILED"
            lines.append(
                f"  {name:<{width}}  {label:<6}  gap/N = {gap:.2e}  "
                f"(|∇ log p|/N = {self.gradient_norms[name]:.2e})"
            )
        return "\n".join(lines)


def check_fisher_identity(
    family, params, X, e_step: Callable | None = None, *, rtol: float = 1e-8
) -> FisherReport:
    r"""Check Fisher's identity, which ties the E-step to the objective.

    At θ = θ_old the score of the marginal likelihood equals the gradient of the
    EM objective built from θ_old's responsibilities:

    .. math::
        ∇_θ \log p(X | θ) \big|_{θ_{old}} = ∇_θ Q(θ | θ_{old}) \big|_{θ_{old}},

    both taken (with the log prior) in the unconstrained coordinates of
    :func:`check_m_step`. A wrong E-step or a log density inconsistent with the
    responsibilities breaks it.

    Args:
      family: the model family.
      params: θ_old, the family's params.
      X: data, shape (N, D).
      e_step: optional ``e_step(params, X) -> resp`` as in :func:`check_e_step`;
        None uses the family's E-step.
      rtol: tolerance on ``‖∇ log p − ∇Q‖ / N`` per field.

    Returns:
      A :class:`FisherReport`.

    Examples:
      >>> import jax, numpy as np, jaxmix
      >>> X = np.random.default_rng(0).normal(size=(50, 2))
      >>> family = jaxmix.families.Gaussian("diag")
      >>> params = jaxmix.initialize(family, jax.random.key(0), X, 2)
      >>> jaxmix.check.check_fisher_identity(family, params, X).ok
      True
    """
    with jax.enable_x64(True):
        X = common.as_data(X, allow_nan=family.missing_values)
        family.check_data(np.asarray(X))
        params = common.as_float64(params)
        resp = jnp.asarray(_given_responsibilities(family, params, X, e_step))
        score, gradient = _fisher_gradients(family, X, resp, params)
        n_samples = X.shape[0]
        names = [name for name in params._fields if name in score]
        gaps = {
            name: float(np.linalg.norm(np.asarray(score[name] - gradient[name])))
            / n_samples
            for name in names
        }
        gaps = {name: gap if np.isfinite(gap) else np.inf for name, gap in gaps.items()}
        norms = {
            name: float(np.linalg.norm(np.asarray(score[name]))) / n_samples
            for name in names
        }
        ok = all(gap <= rtol for gap in gaps.values())
        return FisherReport(ok=bool(ok), gaps=gaps, gradient_norms=norms, rtol=rtol)
