r"""Autodiff verification of E-steps and M-steps: "is my derivation right?".

A closed-form M-step claims to maximise the EM objective at fixed
responsibilities r_nk,

.. math::
    Q(θ) = Σ_n Σ_k r_{nk} [\log π_k + \log p(x_n | θ_k)] + \log p(θ),

(the log prior is zero for maximum likelihood) under the constraints of the
parameters. :func:`check_m_step` tests that claim numerically, in float64:

- **stationarity**: the gradient of Q at the returned θ is zero in unconstrained
  coordinates (weights through softmax coordinates, which is the Lagrange
  condition for Σ π_k = 1; covariances through a Cholesky factor with log
  diagonal, so Σ stays symmetric positive definite; variances through their
  logarithm; Bernoulli means through logits; see :mod:`jaxmix.families.charts`).
  Coordinates are scaled by the data's standard deviation, so the gradient
  divided by N is dimensionless; a field fails when ``|∂Q/∂u|/N > rtol``;
- **maximality**: Q does not increase at small random feasible perturbations
  of each field, nor when an L-BFGS maximiser (optax) is started from θ.

Q is differentiated at fixed responsibilities, never through a fit.

Fields that the family fixes (uniform weights, a known variance) are not
checked; an M-step that changes them fails. A returned value that is not
feasible (covariance not positive definite, weights off the simplex, ...) fails
with the reason; to still check the other fields it is replaced, for the rest
of the check, by its value at the E-step's parameters.

``reg_covar`` is not part of the objective: the maximiser of Q is the
unregularised update. The family's own M-step is therefore checked with
``reg_covar = 0``, and a user's M-step that adds a ridge fails with a gap
proportional to the ridge.

Examples:
  >>> import numpy as np, jaxmix.check
  >>> X = np.random.default_rng(0).normal(size=(100, 2))
  >>> def m_step(X, resp):
  ...     counts = resp.sum(0)
  ...     means = resp.T @ X / counts[:, None]
  ...     centred = X[None] - means[:, None]
  ...     covariances = np.einsum("nk,knd,kne->kde", resp, centred, centred)
  ...     return {"weights": counts / len(X), "means": means,
  ...             "covariances": covariances / counts[:, None, None]}
  >>> jaxmix.check.check_m_step(jaxmix.families.Gaussian("full"), X, m_step).ok
  True
"""

from jaxmix.check.e_step import EStepReport as EStepReport
from jaxmix.check.e_step import FisherReport as FisherReport
from jaxmix.check.e_step import check_e_step as check_e_step
from jaxmix.check.e_step import check_fisher_identity as check_fisher_identity
from jaxmix.check.m_step import FieldReport as FieldReport
from jaxmix.check.m_step import MStepReport as MStepReport
from jaxmix.check.m_step import check_m_step as check_m_step
from jaxmix.check.monotone import MonotoneReport as MonotoneReport
from jaxmix.check.monotone import check_monotone as check_monotone
