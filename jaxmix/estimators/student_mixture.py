"""``StudentMixture``: a mixture of multivariate t distributions, robust to outliers."""

from __future__ import annotations

import functools
from numbers import Integral, Real
from typing import ClassVar

import jax
import numpy as np

from jaxmix.estimators.base import MixtureEstimator
from jaxmix.estimators.validation import (
    Interval,
    StrOptions,
    check_weights_init,
    precision,
)
from jaxmix.families import covariance_kernels
from jaxmix.families.student import StudentT, StudentTParams, check_dof


def _check_means(means, n_components: int, n_features: int) -> np.ndarray:
    means = np.asarray(means, dtype=np.float64)
    if means.shape != (n_components, n_features):
        raise ValueError(
            f"means_init must have shape ({n_components}, {n_features}), got "
            f"{means.shape}"
        )
    if not np.all(np.isfinite(means)):
        raise ValueError("means_init contains NaN or infinity")
    return means


def _check_precisions(precisions, covariance_type, n_components, n_features):
    """User precisions (inverse scale matrices), checked, as scale matrices."""
    precisions = np.asarray(precisions, dtype=np.float64)
    kernel = covariance_kernels.KERNELS[covariance_type]
    shape = kernel.shape(n_components, n_features)
    if precisions.shape != shape:
        raise ValueError(
            f"precisions_init for covariance_type={covariance_type!r} must have "
            f"shape {shape}, got {precisions.shape}"
        )
    if not np.all(np.isfinite(precisions)):
        raise ValueError("precisions_init contains NaN or infinity")
    kernel.check_precisions(precisions, n_features)
    return kernel.covariances_from_precisions(precisions)


def _dof_values(dof, n_components: int) -> np.ndarray:
    """ν as (K,) float64: a number for every component, or one per component."""
    check_dof(dof)
    values = np.asarray(dof, dtype=np.float64)
    if values.shape not in ((), (n_components,)):
        raise ValueError(
            f"dof must be a number or have shape ({n_components},), got {values.shape}"
        )
    return np.broadcast_to(values, (n_components,)).copy()


@functools.partial(jax.jit, static_argnames="covariance_type")
def _precision_factors(covariances, covariance_type: str):
    """Cholesky factors of the precisions, and the precisions (one program)."""
    kernel = covariance_kernels.KERNELS[covariance_type]
    prec_chol = kernel.precisions_cholesky(covariances)
    return prec_chol, kernel.precisions(prec_chol)


class StudentMixture(MixtureEstimator):
    r"""Mixture of multivariate t distributions fitted by EM (ECM), robust to outliers.

    Each component is a multivariate t with location μ_k (``means_``), scale
    matrix Σ_k (``covariances_``) and ν_k degrees of freedom (``dof_``); see
    :mod:`jaxmix.families.student`. A sample far from a component gets the
    weight :math:`u = (ν + D) / (ν + δ)` (δ its squared Mahalanobis distance)
    in that component's mean and scale, so a few gross outliers barely move
    them, where they drag a Gaussian mixture's means. Small ν means heavy
    tails; ν → ∞ is the Gaussian mixture.

    The interface is that of :class:`jaxmix.GaussianMixture`, plus ``dof`` and
    ``learn_dof``. The ``n_init`` restarts run as one vmapped compiled program;
    float32 data is fitted in float32, float64 data in float64. ``fit`` accepts
    ``sample_weight``.

    Args:
      n_components: number of mixture components K.
      covariance_type: shape of the scale matrices: ``"full"``, ``"tied"``,
        ``"diag"`` or ``"spherical"``.
      tol: convergence threshold on the change of the mean log-likelihood.
      reg_covar: non-negative value added to every scale matrix's diagonal.
      max_iter: maximum number of EM iterations.
      n_init: number of restarts; the best (highest final log-likelihood) is
        kept.
      init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or
        ``"random_from_data"``: responsibilities, turned into a start by a
        weighted t fit of each component (:meth:`jaxmix.families.StudentT.reference`).
      weights_init, means_init: optional starting weights (K,) and locations
        (K, D).
      precisions_init: optional starting inverse scale matrices, in the
        shape of ``covariance_type`` (as GaussianMixture's).
      dof: ν > 0, a number or one per component (K,): the degrees of freedom
        if ``learn_dof`` is False, their starting value otherwise. Default 10.
      learn_dof: learn one ν per component (default) or keep ``dof``. Learned
        ν lies in [0.5, 1e10]; data without heavy tails drives it up, towards
        the Gaussian limit. The start fits each component's ν to its
        initial responsibilities by a fast method (ECME); EM then moves ν by
        ECM steps, which are slow where the likelihood is flat in ν (a large
        ν moves by a fraction of a unit per iteration), so with a loose
        ``tol`` the fit may stop with ν still moving.
      random_state: None, an int or a ``numpy.random.RandomState``.
      warm_start: start from the previous fit's parameters.
      verbose, verbose_interval: print a per-iteration report after the fit.

    Attributes:
      weights_: (K,) mixing weights.
      means_: (K, D) locations μ_k (each the component's mean when ν_k > 1).
      covariances_: the scale matrices Σ_k in scikit-learn's covariance shapes
        (full (K, D, D), tied (D, D), diag (K, D), spherical (K,)). They are
        not the components' covariances, which are Σ_k ν_k / (ν_k − 2) for
        ν_k > 2 (and infinite otherwise).
      precisions_, precisions_cholesky_: inverses of the scale matrices and
        their Cholesky factors, as GaussianMixture's.
      dof_: (K,) degrees of freedom ν_k.
      converged_, n_iter_, lower_bound_ (the mean log-likelihood at the last
      E-step), lower_bounds_, n_features_in_.

    Examples:
      >>> import numpy as np
      >>> from jaxmix import StudentMixture
      >>> rng = np.random.default_rng(0)
      >>> X = np.concatenate([rng.standard_t(3, (300, 2)),
      ...                     10 + rng.standard_t(3, (300, 2))])
      >>> tm = StudentMixture(2, random_state=0).fit(X)
      >>> np.sort(tm.means_[:, 0]).round(0)
      array([ 0., 10.])
    """

    _parameter_constraints: ClassVar[dict] = {
        **MixtureEstimator._parameter_constraints,
        "covariance_type": [StrOptions(set(covariance_kernels.COVARIANCE_TYPES))],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "dof": [Interval(Real, 0.0, None, closed="neither"), "array-like"],
        "learn_dof": ["boolean"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
    }
    _nonfinite_message = (
        "Fitting the t mixture failed because some components have ill-defined "
        "scale matrices (for instance caused by singleton or collapsed samples). "
        "Try to decrease the number of components, increase reg_covar, or scale "
        "the input data."
    )

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        dof=10.0,
        learn_dof=True,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.dof = dof
        self.learn_dof = learn_dof
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    def _make_family(self, X: np.ndarray | None) -> StudentT:
        dtype = np.float64 if X is None else X.dtype
        dof = _dof_values(self.dof, self.n_components)
        # One number stays a number: the same compiled program for every ν.
        dof = float(dof[0]) if np.ndim(self.dof) == 0 else dof.astype(dtype)
        return StudentT(
            covariance_type=self.covariance_type,
            reg_covar=self.reg_covar,
            dof=dof,
            learn_dof=bool(self.learn_dof),
        )

    def _user_params(self, X: np.ndarray, family: StudentT) -> dict:
        del family
        n_features = X.shape[1]
        user = {}
        if self.weights_init is not None:
            user["weights"] = check_weights_init(self.weights_init, self.n_components)
        if self.means_init is not None:
            user["means"] = _check_means(self.means_init, self.n_components, n_features)
        if self.precisions_init is not None:
            user["covariances"] = _check_precisions(
                self.precisions_init,
                self.covariance_type,
                self.n_components,
                n_features,
            )
        if len(user) == 3:
            # A complete start: ν starts at ``dof``. Otherwise the initialised
            # start keeps the ν its weighted t fit found.
            user["dof"] = _dof_values(self.dof, self.n_components)
        return user

    def _set_fitted(self, params: StudentTParams, dtype) -> None:
        self.weights_ = params.weights
        self.means_ = params.means
        self.covariances_ = params.covariances
        self.dof_ = params.dof
        with precision(dtype):
            prec_chol, precisions = _precision_factors(
                params.covariances, self.covariance_type
            )
            self.precisions_cholesky_ = np.asarray(prec_chol, dtype=dtype)
            self.precisions_ = np.asarray(precisions, dtype=dtype)

    def _fitted_params(self) -> StudentTParams:
        return StudentTParams(self.weights_, self.means_, self.covariances_, self.dof_)

    def _draw(self, rng, labels):
        r"""Component k's samples are :math:`μ_k + z / \sqrt{w}` with
        z ~ N(0, Σ_k) and w ~ χ²(ν_k) / ν_k."""
        kernel = covariance_kernels.KERNELS[self.covariance_type]
        counts = np.bincount(labels, minlength=self.n_components)
        origin = np.zeros(self.n_features_in_)
        covariances = self.covariances_.astype(np.float64)
        blocks = []
        for k, count in enumerate(counts):
            noise = kernel.sample_numpy(rng, origin, covariances, k, count)
            dof = float(self.dof_[k])
            scale = np.sqrt(rng.chisquare(dof, count) / dof)
            blocks.append(self.means_[k] + noise.reshape(count, -1) / scale[:, None])
        return np.vstack(blocks)
